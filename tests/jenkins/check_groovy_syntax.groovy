// Parses Groovy files the way Jenkins' CPS compiler starts: to the CONVERSION phase (syntax and AST,
// no class resolution, so pipeline steps need not exist). Usage: groovy check_groovy_syntax.groovy FILE...
// Exit status 1 and the compiler's messages (file, line, column) when a file does not parse.
import org.codehaus.groovy.control.CompilationUnit
import org.codehaus.groovy.control.CompilerConfiguration
import org.codehaus.groovy.control.MultipleCompilationErrorsException
import org.codehaus.groovy.control.Phases

int failures = 0
for (String path : args) {
    File file = new File(path)
    CompilationUnit unit = new CompilationUnit(new CompilerConfiguration())
    unit.addSource(file.name, file.getText('UTF-8'))
    try {
        unit.compile(Phases.CONVERSION)
        println "ok ${path}"
    } catch (MultipleCompilationErrorsException e) {
        System.err.println("${path}: ${e.message}")
        failures++
    }
}
System.exit(failures ? 1 : 0)
