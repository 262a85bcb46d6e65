"""A model version's lineage as a graph, drawn server-side as SVG (no script, nothing fetched).

The chain of docs/architecture.md §5, left to right: source commit → config → pipeline → data snapshot →
training run → model, then one node per deploy-model run of that version, a rollback drawn as such.
"""

from __future__ import annotations

from html import escape
from typing import Any

from branchops import records

NODE_W, NODE_H, GAP_X, GAP_Y, MARGIN = 172, 58, 30, 16, 12


def lineage_graph(chain: dict[str, Any], deploys: list[records.StoredRecord]) -> dict[str, Any]:
    """Nodes and edges of the chain; ``deploys`` are the deploy-model records that released its version."""
    training, pipeline, model = chain["training"], chain["pipeline"], chain["model"]
    data = chain["data"] or {}
    mr = training.get("merge_request")
    chain_nodes = [
        (
            "commit",
            "commit",
            str(training.get("commit") or "?")[:12],
            f"!{mr}" if mr else "no merge request",
            None,
        ),
        ("config", "config", str(training.get("config_digest") or "?")[:12], "digest", None),
        (
            "pipeline",
            "pipeline",
            str(pipeline.get("name") or "?"),
            str(pipeline.get("spec_hash") or "?")[:12],
            _run_link("kf-pipeline", (pipeline.get("uploaded_by") or {}).get("run_id")),
        ),
        ("data", "data snapshot", str(data.get("snapshot") or "none"), str(data.get("volume") or ""), None),
        (
            "run",
            "training run",
            str(training.get("run_id"))[:20],
            str(training.get("experiment") or ""),
            _run_link("training", training.get("run_id")),
        ),
        ("model", "model", f"version {model.get('version')}", str(model.get("snapshot") or ""), None),
    ]
    nodes = [
        {"id": node_id, "kind": node_id, "title": title, "line1": line1, "line2": line2, "href": href}
        for node_id, title, line1, line2, href in chain_nodes
    ]
    edges = [(a["id"], b["id"], "") for a, b in zip(nodes, nodes[1:])]
    for stored in deploys:
        deployment = stored.deploy_outputs.deployment
        outcome = deployment.outcome if deployment else stored.outcome
        before, after = (deployment.before, deployment.after) if deployment else (None, None)
        # rolled back: the rollout of this version failed and serving went back to the version before;
        # a rollback to this version: a deployment of it that replaced a newer one
        rolled_back = outcome == "rolled_back"
        rollback_to = not rolled_back and None not in (before, after) and before > after
        node_id = f"deploy-{stored.run_id}"
        nodes.append(
            {
                "id": node_id,
                "kind": "rollback" if rolled_back or rollback_to else "deploy",
                "title": "rolled back" if rolled_back else ("rollback to it" if rollback_to else "deployed"),
                "line1": f"{'nothing' if before is None else before} → {after}",
                "line2": stored.run_id[:20],
                "href": _run_link("deploy-model", stored.run_id),
            }
        )
        edges.append(("model", node_id, outcome or stored.outcome))
    return {"nodes": nodes, "edges": edges}


def _run_link(stage: str, run_id: str | None) -> str | None:
    return f"/runs/{stage}/{run_id}" if run_id else None


def render_svg(graph: dict[str, Any]) -> str:
    """The graph as an inline SVG: the chain on one row, the deployments in a column after the model."""
    chain = [n for n in graph["nodes"] if not str(n["id"]).startswith("deploy-")]
    deploys = [n for n in graph["nodes"] if str(n["id"]).startswith("deploy-")]
    place: dict[str, tuple[int, int]] = {}
    for i, node in enumerate(chain):
        place[node["id"]] = (MARGIN + i * (NODE_W + GAP_X), MARGIN)
    deploy_x = MARGIN + len(chain) * (NODE_W + GAP_X)
    for j, node in enumerate(deploys):
        place[node["id"]] = (deploy_x, MARGIN + j * (NODE_H + GAP_Y))
    width = deploy_x + (NODE_W + MARGIN if deploys else MARGIN - GAP_X)
    height = MARGIN * 2 + max(1, len(deploys)) * (NODE_H + GAP_Y) - GAP_Y
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="lineage" role="img" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" aria-label="lineage graph">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>',
    ]
    for source, target, label in graph["edges"]:
        (x1, y1), (x2, y2) = place[source], place[target]
        parts.append(
            f'<line class="edge" x1="{x1 + NODE_W}" y1="{y1 + NODE_H / 2}" x2="{x2}" y2="{y2 + NODE_H / 2}" '
            f'stroke="#555" marker-end="url(#arrow)"><title>{escape(label)}</title></line>'
        )
    for node in graph["nodes"]:
        x, y = place[node["id"]]
        box = (
            f'<g class="node node-{escape(node["kind"])}" data-node="{escape(str(node["id"]))}">'
            f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="6"/>'
            f'<text x="{x + 8}" y="{y + 17}" class="title">{escape(node["title"])}</text>'
            f'<text x="{x + 8}" y="{y + 34}">{escape(_fit(node["line1"]))}</text>'
            f'<text x="{x + 8}" y="{y + 50}" class="muted">{escape(_fit(node["line2"]))}</text></g>'
        )
        parts.append(f'<a href="{escape(node["href"])}">{box}</a>' if node["href"] else box)
    parts.append("</svg>")
    return "".join(parts)


def _fit(text: str, width: int = 24) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
