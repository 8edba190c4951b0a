"""The requirements setup.py declares are true: the Python floor, the library floors, every import declared.

A user on the lowest Python or library release setup.py allows gets what pip resolves from it; code that
needs more fails deep inside a run (a SyntaxError, an AttributeError) instead of at install time.
"""
import ast
import importlib.util
import inspect
import re
from pathlib import Path

import pytest
import torch

from helpers import tiny_folder, track_folders
from openunmix_like.modeldir import AudioSettings

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "openunmix_like").rglob("*.py")) + [ROOT / "hubconf.py"]


def setup_arguments() -> dict:
    """``python_requires``, ``install_requires`` and ``extras_require`` as setup.py passes them."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup")
    wanted = ("python_requires", "install_requires", "extras_require")
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in wanted}


def version(text: str) -> tuple:
    return tuple(int(part) for part in text.split("."))


def floors() -> dict:
    """``{"torch": (2, 3), ...}`` from install_requires."""
    found = (re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", r) for r in setup_arguments()["install_requires"])
    return {m[1].lower(): version(m[2]) for m in found if m}


def python_floor() -> tuple:
    return version(re.fullmatch(r">=([0-9.]+)", setup_arguments()["python_requires"])[1])


def parsed():
    for path in SOURCES:
        yield path.relative_to(ROOT), ast.parse(path.read_text(), filename=str(path))


def test_every_file_parses_as_the_lowest_python_declared():
    floor = python_floor()
    for path in SOURCES:
        try:
            ast.parse(path.read_text(), filename=str(path), feature_version=floor[:2])
        except SyntaxError as exc:
            pytest.fail(f"{path.relative_to(ROOT)}:{exc.lineno}: not Python {floor}: {exc.msg}")


# Standard-library names, and keyword arguments, newer than Python 3.9, with the version that added them.
NEWER_NAMES = {
    "contextlib.aclosing": (3, 10), "dataclasses.KW_ONLY": (3, 10), "inspect.get_annotations": (3, 10),
    "importlib.metadata.packages_distributions": (3, 10), "itertools.pairwise": (3, 10),
    "statistics.correlation": (3, 10), "statistics.covariance": (3, 10), "statistics.linear_regression": (3, 10),
    "sys.orig_argv": (3, 10), "sys.stdlib_module_names": (3, 10), "types.EllipsisType": (3, 10),
    "types.NoneType": (3, 10), "types.NotImplementedType": (3, 10), "types.UnionType": (3, 10),
    "typing.Concatenate": (3, 10), "typing.ParamSpec": (3, 10), "typing.TypeAlias": (3, 10),
    "typing.TypeGuard": (3, 10), "typing.is_typeddict": (3, 10), "aiter": (3, 10), "anext": (3, 10),
    "EncodingWarning": (3, 10),
    "asyncio.Runner": (3, 11), "asyncio.TaskGroup": (3, 11), "asyncio.timeout": (3, 11), "contextlib.chdir": (3, 11),
    "datetime.UTC": (3, 11), "enum.StrEnum": (3, 11), "hashlib.file_digest": (3, 11),
    "logging.getLevelNamesMapping": (3, 11), "operator.call": (3, 11), "sys.exception": (3, 11), "tomllib": (3, 11),
    "typing.LiteralString": (3, 11), "typing.Never": (3, 11), "typing.NotRequired": (3, 11),
    "typing.Required": (3, 11), "typing.Self": (3, 11), "typing.assert_never": (3, 11),
    "typing.dataclass_transform": (3, 11), "typing.reveal_type": (3, 11), "BaseExceptionGroup": (3, 11),
    "ExceptionGroup": (3, 11),
    "itertools.batched": (3, 12), "math.sumprod": (3, 12), "typing.override": (3, 12),
    "os.process_cpu_count": (3, 13),
}
NEWER_KEYWORDS = {
    ("zip", "strict"): (3, 10), ("dataclass", "slots"): (3, 10), ("dataclass", "kw_only"): (3, 10),
    ("dataclass", "match_args"): (3, 10), ("bisect", "key"): (3, 10), ("bisect_left", "key"): (3, 10),
    ("bisect_right", "key"): (3, 10), ("insort", "key"): (3, 10), ("glob", "root_dir"): (3, 10),
    ("realpath", "strict"): (3, 10), ("TemporaryDirectory", "delete"): (3, 12),
    ("NamedTemporaryFile", "delete_on_close"): (3, 12), ("rmtree", "onexc"): (3, 12),
}
# Called with the exception alone (the one-argument form is Python 3.10's).
ONE_ARGUMENT_FORMS = {"traceback.print_exception", "traceback.format_exception"}


def dotted(node) -> str:
    """``a.b.c`` for a name or attribute chain, else ''."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = dotted(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    return ""


def newer_features(tree):
    """(line, what) for each use of a feature newer than the Python floor."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Name, ast.Attribute)) and dotted(node) in NEWER_NAMES:
            yield node.lineno, dotted(node), NEWER_NAMES[dotted(node)]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                if name in NEWER_NAMES or node.module in NEWER_NAMES:
                    yield node.lineno, name, NEWER_NAMES.get(name, NEWER_NAMES.get(node.module))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in NEWER_NAMES:
                    yield node.lineno, alias.name, NEWER_NAMES[alias.name]
        elif isinstance(node, ast.Call):
            name = dotted(node.func)
            for keyword in node.keywords:
                since = NEWER_KEYWORDS.get((name.rpartition(".")[2], keyword.arg))
                if since:
                    yield node.lineno, f"{name}({keyword.arg}=)", since
            if name in ONE_ARGUMENT_FORMS and len(node.args) == 1 and not node.keywords:
                yield node.lineno, f"{name}(exc) with one argument", (3, 10)
        elif isinstance(node, ast.TryStar if hasattr(ast, "TryStar") else ()):
            yield node.lineno, "except*", (3, 11)


def test_no_code_needs_a_python_newer_than_the_floor():
    floor = python_floor()
    found = [f"{path}:{line}: {what} needs Python {'.'.join(map(str, since))}"
             for path, tree in parsed() for line, what, since in newer_features(tree) if since > floor]
    assert not found, found


def union_annotations(tree):
    """Lines of ``X | Y`` annotations: typing.get_type_hints (architectures/config.py) and FastAPI evaluate
    annotations at run time, where ``|`` between types needs Python 3.10 even under ``from __future__``."""
    for node in ast.walk(tree):
        notes = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            every = node.args.posonlyargs + node.args.args + node.args.kwonlyargs + [node.args.vararg, node.args.kwarg]
            notes = [a.annotation for a in every if a is not None] + [node.returns]
        elif isinstance(node, ast.AnnAssign):
            notes = [node.annotation]
        elif isinstance(node, ast.Call) and dotted(node.func) in ("isinstance", "issubclass") and len(node.args) == 2:
            notes = [node.args[1]]
        for note in notes:
            if note is not None and any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr)
                                        for n in ast.walk(note)):
                yield note.lineno


def test_no_type_union_written_with_a_bar_below_python_3_10():
    if python_floor() >= (3, 10):
        pytest.skip("the floor is 3.10 or later: X | Y is fine")
    found = [f"{path}:{line}" for path, tree in parsed() for line in union_annotations(tree)]
    assert not found, f"X | Y annotations (write Optional[X] / Union[X, Y]): {found}"


def test_the_checks_above_catch_what_they_look_for():
    """Each check finds a sample of what it looks for (so that a check broken by an edit shows)."""
    sample = ast.parse("import traceback, typing\nfrom itertools import pairwise\n"
                       "def f(x: int | None) -> typing.Self:\n    traceback.print_exception(x)\n"
                       "    return zip(x, x, strict=True)\n")
    assert {what for _, what, _ in newer_features(sample)} == {
        "itertools.pairwise", "typing.Self", "traceback.print_exception(exc) with one argument", "zip(strict=)"}
    assert list(union_annotations(sample)) == [3]


# Modules whose distribution has another name (starlette is FastAPI's base: installed with it, its API).
DISTRIBUTIONS = {"yaml": "pyyaml", "multipart": "python-multipart", "python_multipart": "python-multipart",
                 "starlette": "fastapi", "sklearn": "scikit-learn", "grpc": "grpcio"}


def third_party_imports():
    """{top-level module: [where]} for every import of a module outside the standard library."""
    found = {}
    for path, tree in parsed():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for top in {n.split(".")[0] for n in names} - {"openunmix_like"}:
                found.setdefault(top, []).append(f"{path}:{node.lineno}")
    return {top: where for top, where in found.items() if not is_stdlib(top)}


def is_stdlib(module: str) -> bool:
    spec = importlib.util.find_spec(module)
    if spec is None:  # not installed here: not the standard library, which always is
        return False
    origin = spec.origin or next(iter(spec.submodule_search_locations or []), "")
    return origin in ("built-in", "frozen") or not re.search(r"[/\\](site|dist)-packages[/\\]", origin)


def requirement_name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement)[0].lower()


def test_every_module_the_package_imports_is_declared():
    args = setup_arguments()
    declared = {requirement_name(r) for r in args["install_requires"]}
    for extra, requirements in args["extras_require"].items():
        if extra != "tests":  # what users install: the test extra is not where a user looks
            declared |= {requirement_name(r) for r in requirements}
    missing = {top: where for top, where in third_party_imports().items()
               if DISTRIBUTIONS.get(top, top).lower() not in declared}
    assert not missing, f"imported but in neither install_requires nor a user extra: {missing}"


def test_every_extra_the_docs_and_messages_name_exists():
    texts = {p.relative_to(ROOT): p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}
    texts.update({p.relative_to(ROOT): p.read_text() for p in SOURCES})
    extras = set(setup_arguments()["extras_require"])
    named = {(str(where), extra) for where, text in texts.items()
             for group in re.findall(r"(?:openunmix-like|\.)\[([a-z0-9_,-]+)\]", text) for extra in group.split(",")}
    assert {e for _, e in named} >= {"evaluate", "web", "ray", "export"}  # the scan finds them
    unknown = sorted((where, extra) for where, extra in named if extra not in extras)
    assert not unknown, f"extras named but not in setup.py (pip installs without them, warning only): {unknown}"


# The torch each API used by the package first appears in.
TORCH_API_SINCE = {"torch.amp.GradScaler": (2, 3)}
# The lowest release of each library that no longer supports a Python version.
DROPPED_PYTHON = {
    "torch": {(2, 5): (3, 8), (2, 9): (3, 9)},
    "numpy": {(1, 25): (3, 8), (2, 1): (3, 9), (2, 3): (3, 10)},
    "scipy": {(1, 11): (3, 8), (1, 14): (3, 9), (1, 16): (3, 10)},
}


def test_the_torch_floor_has_every_torch_api_the_package_uses():
    floor = floors()["torch"]
    text = "\n".join(p.read_text() for p in SOURCES)
    used = {api: since for api, since in TORCH_API_SINCE.items() if api in text}
    assert used, "the table names no API the package uses: update it"
    too_new = {api: since for api, since in used.items() if since > floor}
    assert not too_new, f"torch>={'.'.join(map(str, floor))} lacks {too_new}"


def test_the_library_floors_install_on_the_python_floor():
    python = python_floor()
    declared = floors()
    for library, dropped in DROPPED_PYTHON.items():
        for release, gone in dropped.items():
            assert not (declared[library] >= release and python <= gone), (
                f"{library}>={declared[library]} does not install on Python {python}: raise python_requires")


def test_onnx_export_works_with_a_torch_whose_exporter_has_no_dynamo_choice(tmp_path, monkeypatch, capsys):
    """torch before 2.5: ``torch.onnx.export`` has no ``dynamo`` argument (its exporter is the TorchScript one)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from openunmix_like.cli.export import main as export_main

    real = torch.onnx.export
    if "dynamo" not in inspect.signature(real).parameters:
        pytest.skip("the installed torch is such a torch already")

    def export_before_2_5(model, args, f, opset_version=None, input_names=None, output_names=None,
                          dynamic_axes=None):
        return real(model, args, f, opset_version=opset_version, input_names=input_names,
                    output_names=output_names, dynamic_axes=dynamic_axes, dynamo=False)

    monkeypatch.setattr(torch.onnx, "export", export_before_2_5)
    folder = tiny_folder(tmp_path, "umx", AudioSettings(22050, 512, 128, 2), targets=("vocals",))
    code = export_main([str(folder), "--format", "onnx", "--outdir", str(tmp_path / "onnx")])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "onnx" / "vocals.onnx").is_file()
    assert "max deviation from the model" in capsys.readouterr().out


def test_umx_evaluate_without_museval_names_the_extra_before_any_work(tmp_path, monkeypatch, capsys):
    from openunmix_like.cli.evaluate import main as evaluate_main

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "museval" else find_spec(name, *args))
    root = track_folders(tmp_path / "data", tracks=1, seconds=1.0) / "valid"
    code = evaluate_main(["--root", str(root), "--layout", "folder", "--oracle", "irm2",
                          "--evaldir", str(tmp_path / "eval")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err == ["umx-evaluate: error: umx-evaluate scores with museval, which is not installed: "
                   "pip install 'openunmix-like[evaluate]'"]
    assert not (tmp_path / "eval").exists()


def test_scoring_from_python_without_museval_names_the_extra(monkeypatch):
    # score_track raised a bare ModuleNotFoundError for API users (the CLI checks first).
    import sys

    import numpy as np

    from openunmix_like.errors import OpenUnmixLikeError
    from openunmix_like.evaluate import score_track

    monkeypatch.setitem(sys.modules, "museval", None)  # import museval now raises ImportError
    audio = {"vocals": np.ones((44100, 2)), "other": np.ones((44100, 2))}
    with pytest.raises(OpenUnmixLikeError, match=r"pip install 'openunmix-like\[evaluate\]'"):
        score_track("song", audio, audio, 44100)


# The lowest releases the package's tests and a umx-separate were run with (Python 3.11, where numpy 1.23.2
# and scipy 1.9.2 are the first with wheels): a floor below them is a claim nobody checked.
LOWEST_TESTED = {"torch": (2, 3), "numpy": (1, 23, 2), "scipy": (1, 9, 2), "soundfile": (0, 12), "safetensors": (0, 4),
                 "tqdm": (4, 60)}


# The same for the extras, with their tests (web, export, evaluate, catalogue) at these releases. s3fs before
# 2023.3 refuses the endpoint_url that docs/catalogue.md passes in --storage-options (AioSession TypeError).
EXTRAS_LOWEST_TESTED = {"web": {"fastapi": (0, 110), "uvicorn": (0, 29), "python-multipart": (0, 0, 9)},
                        "export": {"onnx": (1, 15), "onnxruntime": (1, 17), "onnxscript": (0, 6)},
                        "evaluate": {"museval": (0, 4), "matplotlib": (3, 6)},
                        "ray": {"ray": (2, 9), "fsspec": (2023, 3), "s3fs": (2023, 3), "pyarrow": (12,),
                                "grpcio": (1, 49, 1)},  # grpcio: the first with Python 3.11 wheels
                        "musdb": {"musdb": (0, 4, 0), "stempeg": (0, 2, 3)},
                        "slakh": {"pyyaml": (5,)}, "medleydb": {"pyyaml": (5,)}}  # pyyaml: 5.1, the first 5
# Not run at their floors here: synth needs pyworld and system synthesisers; tests is for developers.
EXTRAS_UNTESTED = {"synth", "tests"}


def extra_floors(extra: str) -> dict:
    found = (re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", r) for r in setup_arguments()["extras_require"][extra])
    return {m[1].lower(): version(m[2]) for m in found if m}


def test_no_floor_is_below_the_lowest_release_tested():
    declared = floors()
    assert set(declared) == set(LOWEST_TESTED), "a requirement without a tested floor: test it and add it here"
    below = {name: declared[name] for name, tested in LOWEST_TESTED.items() if declared[name] < tested}
    assert not below, f"floors below the lowest release tested {LOWEST_TESTED}: {below}"
    assert set(setup_arguments()["extras_require"]) == set(EXTRAS_LOWEST_TESTED) | EXTRAS_UNTESTED
    for extra, tested in EXTRAS_LOWEST_TESTED.items():
        declared = extra_floors(extra)
        assert set(declared) == set(tested), (extra, "a requirement without a tested floor: test it, add it here")
        below = {name: declared[name] for name, low in tested.items() if declared[name] < low}
        assert not below, f"[{extra}] floors below the lowest release tested {tested}: {below}"


def test_the_versions_the_docs_install_meet_the_floors():
    declared = floors()
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "environments").glob("*"))]
    pins = [(path.relative_to(ROOT), name.lower(), version(v)) for path in texts
            for name, v in re.findall(r"\b([A-Za-z0-9_-]+)==([0-9]+(?:\.[0-9]+)*)\b", path.read_text())]
    checked = [(where, name, v) for where, name, v in pins if name in declared]
    assert checked, "no pinned install in the docs: the check finds nothing"
    low = [(str(where), name, v) for where, name, v in checked if v < declared[name]]
    assert not low, f"the docs install releases below setup.py's floors: {low}"
