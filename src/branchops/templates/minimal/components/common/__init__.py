"""What the components share: their errors and the split file prepare writes and train reads."""
