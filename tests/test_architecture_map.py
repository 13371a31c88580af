"""docs/architecture.md is checked against the package: its layer table lists every top-level module
exactly once, in the rows of .importlinter (which the import contracts enforce), every path it names
exists, and every "`file.py` `Name`" it names is defined in that file."""
import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "brixel_plugins"
DOC = (ROOT / "docs" / "architecture.md").read_text()


def layer_table():
    """[(row's module names)] of the '## Layers' table, top row first."""
    section = DOC.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| layer")]
    return [tuple(re.sub(r"(/|\.py)$", "", m) for m in re.findall(r"`([^`]+)`", row.split("|")[2])) for row in rows]


def top_level_modules():
    return {p.stem if p.suffix == ".py" else p.name for p in PACKAGE.iterdir()
            if (p.suffix == ".py" and p.name != "__init__.py") or (p.is_dir() and (p / "__init__.py").exists())}


def test_the_layer_table_lists_every_top_level_module_once():
    listed = [name for row in layer_table() for name in row]
    assert sorted(listed) == sorted(set(listed)), "a module is listed twice"
    assert set(listed) == top_level_modules()


def test_the_layer_table_is_the_import_contract():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / ".importlinter")
    contract = [tuple(n.strip() for n in line.split("|"))
                for line in cfg["importlinter:contract:layers"]["layers"].splitlines() if line.strip()]
    assert [set(row) for row in layer_table()] == [set(row) for row in contract]


def _exists(path: str) -> bool:
    path = path.rstrip("/")
    if (PACKAGE / path).exists() or (ROOT / path).exists():
        return True
    return any(str(p.relative_to(PACKAGE)).endswith("/" + path) for p in PACKAGE.rglob("*"))


def test_every_path_named_exists():
    paths = {t for t in re.findall(r"`([\w./<>-]+)`", DOC)
             if ("/" in t or t.endswith(".py")) and "<" not in t and not t.startswith(("configs/d2/COCO/..", "."))}
    missing = sorted(p for p in paths if not _exists(p) and "myup" not in p and "foo" not in p
                     and "myobjective" not in p)
    assert not missing, missing


def test_every_name_placed_in_a_file_is_defined_there():
    """`path.py` `Name` (and `Name.attr`, `Name(...)`): Name is a def, class or assignment in that file."""
    wrong = []
    for path, names in re.findall(r"`([\w/]+\.py)` ((?:`[\w.]+`(?:,? (?:/ )?)?)+)", DOC):
        if "myup" in path or "foo" in path:
            continue
        files = [PACKAGE / path] if (PACKAGE / path).exists() else [ROOT / path] if (ROOT / path).exists() else [
            p for p in PACKAGE.rglob("*.py") if str(p).endswith("/" + path)]
        text = "\n".join(f.read_text() for f in files)
        for name in re.findall(r"`([\w.]+)`", names):
            head, *rest = name.split(".")
            if not re.search(rf"^\s*(def|class) {head}\b|^{head}\b\s*[:=]", text, re.M):
                wrong.append(f"{path} {name}")
            elif rest and not re.search(rf"\b(def|class) {rest[0]}\b|\b{rest[0]}\b\s*[:=]", text):
                wrong.append(f"{path} {name}")
    assert not wrong, wrong
