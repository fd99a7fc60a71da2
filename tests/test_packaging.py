"""The distribution as a user gets it: the sdist and the wheel built from it, the wheel installed into a
fresh environment outside the repository, the symbolic commands without PyTorch, and the clash with an
unrelated distribution that owns a top-level ``verify``.

The fresh environments have no pip of their own and see the dependencies (sympy, numpy, torch,
hypothesis) of this test run's environment through a ``.pth`` line; everything of dlmath's in them comes
from the wheel (``--no-deps``). Builds run offline (``--no-isolation``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import zipfile
from collections.abc import Callable
from email.parser import Parser
from pathlib import Path

import pytest

import dlmath

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("dlmath", "derive", "numeric", "verify")


def _run(args: list[str], cwd: Path, ok: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    p = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if ok and p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def _build(src: Path, out: Path) -> list[Path]:
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)], cwd=src)
    return sorted(out.iterdir())


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist of the repository and the wheel that ``build`` makes from that sdist."""
    built = _build(ROOT, tmp_path_factory.mktemp("dist"))
    return {"sdist": next(p for p in built if p.name.endswith(".tar.gz")),
            "wheel": next(p for p in built if p.suffix == ".whl")}


class Env:
    """A fresh virtual environment outside the repository, without pip: installs go through this run's pip."""

    def __init__(self, root: Path):
        self.root = root
        _run([sys.executable, "-m", "venv", "--without-pip", str(root)], cwd=root.parent)
        self.python = root / "bin" / "python"
        site = Path(_run([str(self.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         cwd=root).stdout.strip())
        (site / "_dlmath_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        self.cwd = root / "work"
        self.cwd.mkdir()

    def pip(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _run([sys.executable, "-m", "pip", "--python", str(self.python), "-q", "--disable-pip-version-check",
                     *args], cwd=self.cwd)

    def install(self, wheel: Path) -> None:
        self.pip("install", "--no-deps", "--no-index", "--ignore-installed", "--no-compile", str(wheel))

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        exe = str(self.root / "bin" / args[0]) if args[0] in ("dlmath", "python") else args[0]
        return _run([exe, *args[1:]], cwd=self.cwd, ok=ok)


@pytest.fixture
def env(tmp_path: Path) -> Callable[[], Env]:
    return lambda: Env(tmp_path / f"env{len(list(tmp_path.iterdir()))}")


# -- the sdist and the wheel ---------------------------------------------------------------------------


def test_sdist_has_what_it_takes_to_build_test_and_document(dist: dict[str, Path]) -> None:
    with tarfile.open(dist["sdist"]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    expected = {"LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "Makefile", "docs/conf.py",
                "tests/conftest.py"}
    for pkg in (*PACKAGES, "tests", "docs"):
        expected |= {str(p.relative_to(ROOT)) for p in (ROOT / pkg).rglob("*.py")
                     if "__pycache__" not in p.parts and "_build" not in p.parts and "auto_examples" not in p.parts}
    expected |= {f"{pkg}/py.typed" for pkg in PACKAGES}
    assert not expected - names, f"missing from the sdist: {sorted(expected - names)}"


def test_wheel_metadata_license_and_typing(dist: dict[str, Path]) -> None:
    with zipfile.ZipFile(dist["wheel"]) as whl:
        names = set(whl.namelist())
        info = f"dlmath-{dlmath.__version__}.dist-info"
        meta = Parser().parsestr(whl.read(f"{info}/METADATA").decode())
        entry_points = whl.read(f"{info}/entry_points.txt").decode()
    assert {f"{pkg}/py.typed" for pkg in PACKAGES} <= names
    assert f"{info}/licenses/LICENSE" in names
    assert {"derive/primitives/__init__.py", "derive/models/__init__.py", "dlmath/__main__.py"} <= names
    assert not any(n.startswith(("tests/", "docs/")) for n in names)
    assert meta["Version"] == dlmath.__version__
    assert meta["License-Expression"] == "MIT"
    classifiers = meta.get_all("Classifier")
    assert "Typing :: Typed" in classifiers and any(c.startswith("Topic :: Scientific") for c in classifiers)
    assert meta.get_all("Project-URL")
    assert "dlmath = dlmath.__main__:main" in entry_points
    assert "dlmath = dlmath.pytest_plugin" in entry_points
    assert "MIT License" in (ROOT / "LICENSE").read_text()


# -- the wheel installed outside the repository --------------------------------------------------------

SMOKE = """
import sys
import dlmath
assert "torch" not in sys.modules, "import dlmath imported torch"
import derive, numeric
assert dlmath.derive is derive and dlmath.numeric is numeric, "dlmath.derive is not derive"
assert "torch" not in sys.modules, "dlmath.derive / dlmath.numeric imported torch"
import verify
assert dlmath.verify is verify
for name in ("dlmath", "derive", "numeric", "verify"):
    assert sys.modules[name].__file__.startswith(sys.prefix), (name, sys.modules[name].__file__)
m = derive.models.get("softmax_regression")
tex = [derive.latex(e) for e in derive.backprop(m)]
assert any(t.replace(" ", "") == r"\\delta=\\hat{y}-y" for t in tex), tex
report = verify.check(m, examples=2)
print(dlmath.__version__, report.examples)
"""


def test_wheel_installed_outside_the_repository(dist: dict[str, Path], env: Callable[[], Env]) -> None:
    e = env()
    e.install(dist["wheel"])
    assert e.run("python", "-c", SMOKE).stdout.split() == [dlmath.__version__, "2"]
    assert e.run("dlmath", "--version").stdout.strip() == f"dlmath {dlmath.__version__}"
    assert e.run("python", "-m", "dlmath", "--version").stdout.strip() == f"dlmath {dlmath.__version__}"
    out = e.run("dlmath", "list").stdout.splitlines()
    assert [line.split()[0] for line in out[1:]] == derive_names()
    bp = e.run("python", "-m", "dlmath", "backprop", "softmax_regression").stdout
    assert r"\delta = \hat{y} - y" in bp
    # the plugin loads in every pytest run of the environment: one that verifies nothing imports no torch
    (e.cwd / "test_other.py").write_text("import sys\n\ndef test_other():\n    assert 'torch' not in sys.modules\n")
    e.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_other.py")
    (e.cwd / "test_mine.py").write_text(
        "import numpy as np\n\n"
        "def test_sigmoid(dlmath_verify):\n"
        "    def layer(Z, G):\n"
        "        s = 1 / (1 + np.exp(-Z))\n"
        "        return {'loss': float(np.sum(G * s)), 'grad': {'Z': G * s * (1 - s)}}\n"
        "    assert dlmath_verify('sigmoid', layer, backend='numpy').examples == 3\n")
    e.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_mine.py", "--dlmath-examples", "3")


def derive_names() -> list[str]:
    import derive

    return derive.models.names()


# -- symbolic commands without torch --------------------------------------------------------------------

NO_TORCH = """
import contextlib, io, sys
from dlmath.__main__ import main
for argv in {commands!r}:
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0, argv
    heavy = [m for m in ("torch", "hypothesis") if m in sys.modules]
    assert not heavy, f"dlmath {{' '.join(argv)}} imported {{heavy}}"
print("ok")
"""


def test_symbolic_commands_import_no_torch(tmp_path: Path) -> None:
    commands = [["list"], ["derive", "softmax_regression", "--wrt", "W"], ["backprop", "mlp"],
                ["hessian", "logistic_regression"], ["codegen", "softmax_regression"],
                ["codegen", "conv2d", "--backend", "torch"], ["list", "--wide"]]
    script = NO_TORCH.format(commands=commands)
    p = _run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r})\n" + script], cwd=tmp_path)
    assert p.stdout.strip() == "ok"


# -- another distribution owning a top-level `verify` ---------------------------------------------------


@pytest.fixture(scope="module")
def foreign_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of an unrelated distribution ``verify`` 1.1.1 whose import package is ``verify``."""
    src = tmp_path_factory.mktemp("foreign")
    (src / "verify").mkdir()
    (src / "verify" / "__init__.py").write_text('"""An unrelated project that verifies e-mail addresses."""\n'
                                                "def verify(address):\n    return '@' in address\n")
    (src / "pyproject.toml").write_text(textwrap.dedent("""\
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "verify"
        version = "1.1.1"

        [tool.setuptools]
        packages = ["verify"]
        """))
    return next(p for p in _build(src, tmp_path_factory.mktemp("foreign-dist")) if p.suffix == ".whl")


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{text}"
    return lines[0]


def test_a_foreign_verify_is_named_with_its_fix(dist: dict[str, Path], foreign_wheel: Path,
                                                env: Callable[[], Env]) -> None:
    e = env()
    e.install(dist["wheel"])
    e.install(foreign_wheel)  # pip overwrites dlmath's verify/__init__.py without a word

    # the command line: one line, exit 2
    p = e.run("dlmath", "list", ok=False)
    line = _one_line(p.stderr)
    assert p.returncode == 2 and not p.stdout
    assert "'verify'" in line and "verify 1.1.1" in line and "pip uninstall verify" in line, line
    print(line)

    # importing: derive (the first import of `import derive, numeric, verify`) and dlmath.verify
    for code in ("import derive", "import dlmath; dlmath.verify"):
        p = e.run("python", "-c", code, ok=False)
        assert p.returncode == 1
        assert p.stderr.strip().splitlines()[-1] == f"dlmath._packages.PackageConflict: {line[len('dlmath: error: '):]}"
    conflicts = e.run("python", "-c", "import dlmath; print(dlmath.conflicts())").stdout
    assert "pip uninstall verify" in conflicts

    # pytest in an unrelated project of the same environment still runs; the plugin warns in one line
    (e.cwd / "test_other.py").write_text("def test_other():\n    assert True\n")
    p = e.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_other.py", ok=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "PytestConfigWarning: dlmath: dlmath's package 'verify' was overwritten" in p.stdout + p.stderr

    # uninstalling the other distribution deletes dlmath's verify/__init__.py: said too, with the fix
    e.pip("uninstall", "-y", "verify")
    line = _one_line(e.run("dlmath", "list", ok=False).stderr)
    assert "missing" in line and "pip install --force-reinstall --no-deps dlmath" in line, line

    # the fix works
    e.install(dist["wheel"])
    assert e.run("dlmath", "list").stdout.startswith("entry")
    assert e.run("python", "-c", "import dlmath; print(dlmath.conflicts())").stdout.strip() == "[]"
