#!/usr/bin/env bash
# CI: build the wheel a PyPI user gets, install it (not editable) into a fresh venv, and use it from another folder.
# Checks: the manifest, its schema and configs/ are inside the package; `zoo weights list` lists every manifest
# entry; a packaged recipe is addressable by name; no top-level `train` / `export` package is installed.
# pip's own cache (~/.cache/pip) is reused, so torch installs from it after the first run.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
PY="${PYTHON:-python3}"
export NO_ALBUMENTATIONS_UPDATE=1 ZOO_OFFLINE=1 MPLBACKEND=Agg
start=$(date +%s)
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

echo "wheel check: building"
"$PY" -m venv "$WORK/build-env"
"$WORK/build-env/bin/python" -m pip install -q --upgrade pip
"$WORK/build-env/bin/python" -m pip wheel -q --no-deps "$REPO" -w "$WORK/dist"
WHEEL="$(ls "$WORK"/dist/lightzoo-*.whl)"

echo "wheel check: contents of $(basename "$WHEEL")"
"$WORK/build-env/bin/python" - "$WHEEL" "$REPO" <<'PY'
import json, sys, zipfile
from pathlib import Path
wheel, repo = zipfile.ZipFile(sys.argv[1]), Path(sys.argv[2])
names = set(wheel.namelist())
tops = {n.split("/", 1)[0] for n in names}
assert tops == {"zoo", next(t for t in tops if t.endswith(".dist-info"))}, f"unexpected top-level entries: {tops}"
manifest = json.loads(wheel.read("zoo/weights_manifest.json"))
assert manifest == json.loads((repo / "weights_manifest.json").read_text()), "packaged manifest differs"
json.loads(wheel.read("zoo/weights_manifest.schema.json"))
want = {f"zoo/configs/{p.relative_to(repo / 'configs').as_posix()}" for p in (repo / "configs").glob("*/*.yaml")}
assert want and want <= names, f"configs missing from the wheel: {sorted(want - names)}"
assert "zoo/layers/selective_scan_cpu.c" in names, "the selective scan kernel's C source is missing from the wheel"
print(f"  {len(names)} files; manifest ({len(manifest['entries'])} entries), schema, {len(want)} configs; "
      f"top level: {sorted(tops)}")
PY

echo "wheel check: installing into a fresh venv"
"$PY" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q --upgrade pip
"$WORK/venv/bin/python" -m pip install -q "$WHEEL[export]"
installed=$(date +%s)

echo "wheel check: running from $WORK/run"
mkdir "$WORK/run" && cd "$WORK/run"
export PATH="$WORK/venv/bin:$PATH"
zoo list > list.txt && head -3 list.txt
zoo weights list > weights.txt && cat weights.txt
zoo train --help-config > help-config.txt && head -3 help-config.txt
zoo train --config classification/emov2_1m_digits --print-config > recipe.txt && head -3 recipe.txt
python - "$REPO" <<'PY'
import importlib.util, json, sys
from pathlib import Path
import timm
import zoo, zoo.export, zoo.train
from zoo.manifest import manifest_path
site = Path(zoo.__file__).resolve().parent.parent
assert site.name == "site-packages", f"zoo imported from {site}, not from the installed wheel"
for generic in ("train", "export", "configs"):
    spec = importlib.util.find_spec(generic)
    assert spec is None, f"a top-level {generic!r} is importable from {spec.origin or spec.submodule_search_locations}"
    assert not (site / generic).exists(), f"site-packages has a {generic!r} folder"
assert manifest_path().resolve().parent == Path(zoo.__file__).resolve().parent, manifest_path()
entries = json.loads((Path(sys.argv[1]) / "weights_manifest.json").read_text())["entries"]
listed = Path("weights.txt").read_text().split()
missing = [f"{e['model']}.{e['tag']}" for e in entries if f"{e['model']}.{e['tag']}" not in listed]
assert not missing, f"`zoo weights list` lacks {missing}"
tags = set(timm.list_models(pretrained=True))
assert {f"{e['model']}.{e['tag']}" for e in entries} <= tags, "manifest entries are not timm pretrained tags"
from zoo.layers.selective_scan_kernel import SOURCE, kernel_status
assert SOURCE.is_file() and SOURCE.resolve().is_relative_to(site), SOURCE
print(f"  zoo from {site}; zoo.train and zoo.export import; no top-level train/export; "
      f"{len(entries)} weights listed and registered as timm tags; CPU scan kernel: {kernel_status()}")
PY
end=$(date +%s)
echo "wheel check: passed in $((end - start)) s (install $((installed - start)) s)"
