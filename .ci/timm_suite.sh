#!/usr/bin/env bash
# timm's own model test-suite (tests/test_models.py from the sdist of the *installed* timm) over every model name
# LightZoo registers with timm. Run from the repository root with the project's venv active:
#
#     bash .ci/timm_suite.sh [extra pytest args]
#     TIMM_SUITE_MODELS="phc_resnet* mobilenetv*_ulsam" bash .ci/timm_suite.sh   # a subset (shell patterns)
#
# The test file is downloaded and extracted into a temporary directory (never into the repository) next to a
# conftest.py that imports zoo, so timm's registry holds our families when pytest collects. Pretrained, inference
# and torchscript tests are excluded (no network; our models are not scripted). Exit status: pytest's, except that
# "no tests collected" (5) is a failure too.
set -euo pipefail
cd "$(dirname "$0")/.."
export NO_ALBUMENTATIONS_UPDATE=1

version=$(python -c "import timm; print(timm.__version__)")
names=$(python - <<'PY'
import fnmatch, os
import zoo
names = zoo.registry.timm_registered_models()
patterns = os.environ.get("TIMM_SUITE_MODELS", "").split()
if patterns:
    names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]
print(" or ".join(names))
PY
)
if [ -z "$names" ]; then echo "timm_suite: no LightZoo model registered with timm (or none matches); failing." >&2; exit 1; fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python -m pip download -q --no-binary :all: --no-deps "timm==${version}" -d "$tmp/sdist"
python - "$tmp" "$version" <<'PY'
import pathlib, sys, tarfile
tmp, version = pathlib.Path(sys.argv[1]), sys.argv[2]
archive = next((tmp / "sdist").glob(f"timm-{version}.tar.gz"))
member = f"timm-{version}/tests/test_models.py"
with tarfile.open(archive) as tar:
    try:
        src = tar.extractfile(member)
    except KeyError:
        src = None
    if src is None:
        sys.exit(f"timm_suite: {member} not found in {archive.name}")
    (tmp / "suite").mkdir()
    (tmp / "suite" / "test_models.py").write_bytes(src.read())
(tmp / "suite" / "conftest.py").write_text("import zoo  # noqa: F401  (registers LightZoo's families with timm)\n")
PY

echo "timm_suite: timm ${version}, tests/test_models.py from its sdist; models: ${names}"
set +e
(cd "$tmp/suite" && python -m pytest -q -p no:cacheprovider --rootdir . test_models.py \
    -k "(${names}) and not pretrained and not inference and not torchscript" "$@")
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "timm_suite: pytest collected no tests; failing." >&2; exit 1; fi
echo "timm_suite: pytest exit status ${rc}"
exit "$rc"
