"""pipeline/ is grouped by stage: a stage imports only earlier stages and the shared modules, and no Gradio."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = ROOT / "pipeline"
# Each package or top-level module's place in the flow; a module imports its own package and lower places only.
# The shared vocabulary (-1) imports no other pipeline module.
PLACE = {"events": -1, "settings": -1, "status": -1, "weights_lock": -1,
         "storage": 0, "intake": 1, "models": 2, "generation": 3, "jobs": 3, "assessment": 4, "library": 5,
         "training": 6, "video": 6, "workflow": 7, "flow_status": 8, "people": 8, "__main__": 9, "__init__": -1}


def _unit(module: str) -> str:
    """'pipeline.intake.faces' -> 'intake'; 'pipeline.settings' -> 'settings'."""
    return module.split(".")[1]


def _imports(path: Path) -> set[str]:
    """Every pipeline module the file imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
            if node.module == "pipeline":
                found |= {f"pipeline.{alias.name}" for alias in node.names}
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("pipeline.")}
    return found


def test_every_pipeline_module_has_a_place_in_the_flow() -> None:
    units = {path.relative_to(PIPELINE).parts[0].removesuffix(".py") for path in PIPELINE.rglob("*.py")}
    assert units == set(PLACE), f"place these in PLACE: {sorted(units - set(PLACE))}"


def test_no_stage_imports_a_later_one_or_gradio() -> None:
    wrong = []
    for path in sorted(PIPELINE.rglob("*.py")):
        unit = path.relative_to(PIPELINE).parts[0].removesuffix(".py")
        source = path.read_text()
        if "import gradio" in source or "from gradio" in source:
            wrong.append(f"{path.relative_to(ROOT)} imports gradio")
        for module in _imports(path):
            other = _unit(module)
            if other != unit and (PLACE[unit] == -1 or PLACE[other] >= PLACE[unit]):
                wrong.append(f"{path.relative_to(ROOT)} ({unit}, {PLACE[unit]}) imports {module} ({PLACE[other]})")
    assert not wrong, "\n".join(wrong)
