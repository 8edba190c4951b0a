"""What a type checker and wider lint rules found: the package as a user's type checker sees it, and a
stem writer's error that named ``None`` instead of the file it could not change."""
import ast
import inspect
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch

import openunmix_like
from openunmix_like.catalogue import records
from openunmix_like.catalogue.stages import Options, Track, store
from openunmix_like.errors import AudioError

INIT = Path(openunmix_like.__file__)
STEMS = ("vocals", "drums")


def names_a_type_checker_sees(tree: ast.Module) -> typing.Set[str]:
    """The module-level names bound where a type checker looks: ``if TYPE_CHECKING:`` bodies, never their
    ``else`` (which only runs)."""
    names: typing.Set[str] = set()

    def visit(statements):
        for node in statements:
            if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                visit(node.body)
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))

    visit(tree.body)
    return names


def test_a_misspelt_import_from_the_package_is_an_error_to_a_type_checker_not_any():
    # A module-level __getattr__ in a type checker's sight makes it take every unknown name for Any:
    # `from openunmix_like import seperate_file` passed mypy and pyright, and failed only when run.
    seen = names_a_type_checker_sees(ast.parse(INIT.read_text()))
    assert "__getattr__" not in seen
    assert set(openunmix_like.__all__) <= seen  # every export still has its own type
    for name in openunmix_like.__all__:  # and is there when run
        assert getattr(openunmix_like, name) is not None
    with pytest.raises(ImportError, match="seperate_file"):
        exec("from openunmix_like import seperate_file", {})


def test_the_public_annotations_resolve():
    """What ``typing.get_type_hints`` (documentation tools, runtime checkers) reads of every export."""
    checked = 0
    for name in openunmix_like.__all__:
        obj = getattr(openunmix_like, name)
        members = [obj] if inspect.isfunction(obj) else []
        if inspect.isclass(obj):
            for value in [obj.__init__, *vars(obj).values()]:
                value = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
                if inspect.isfunction(value) and value.__module__.startswith("openunmix_like"):
                    members.append(value)
        for member in members:
            typing.get_type_hints(member)
            checked += 1
    assert checked > 20
    assert typing.get_type_hints(openunmix_like.separate)["return"] == typing.Dict[str, torch.Tensor]
    assert typing.get_type_hints(openunmix_like.separate_file)["return"] == typing.Dict[str, Path]


SNIPPET = """\
from openunmix_like import seperate_file
import torch
from openunmix_like import Separator, separate, separate_file

separator = Separator.from_pretrained()
reveal_type(separator)
reveal_type(separate(torch.zeros(2, 44100), 44100, model=separator))
reveal_type(separate_file("song.wav", "out", separator))
"""


def test_a_users_type_checker_sees_the_public_types(tmp_path):
    """What a user's mypy says of a script using the package (mypy is in the tests extra)."""
    (tmp_path / "user.py").write_text(SNIPPET)
    env = dict(os.environ)
    root = INIT.parents[1]
    if root.name not in ("site-packages", "dist-packages"):  # an editable install: mypy cannot follow its hook
        env["MYPYPATH"] = str(root)
    result = subprocess.run([sys.executable, "-m", "mypy", "user.py", "--follow-imports=silent",
                             "--ignore-missing-imports", "--no-error-summary", "--cache-dir", str(tmp_path / "cache")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stdout.splitlines() if line.startswith("user.py")]
    assert lines[0].startswith('user.py:1: error: Module "openunmix_like" has no attribute "seperate_file"'), lines
    revealed = [line.split("Revealed type is ")[1].replace("builtins.", "")
                for line in lines if "Revealed type" in line]
    assert revealed == ['"openunmix_like.separator.Separator"', '"dict[str, torch._tensor.Tensor]"',
                        '"dict[str, pathlib.Path]"'], lines


# ---------------------------------------------------------------- stems whose record cannot be removed

def test_a_record_that_cannot_be_removed_is_named_in_the_error(tmp_path):
    # The Ray engine's store stage removes the track's earlier _done.json just before placing the stems;
    # when that fails the error named "None" (no stem was being renamed yet) instead of the record.
    out = tmp_path / "out" / "song"
    done = out / records.DONE_NAME
    done.mkdir(parents=True)  # cannot be unlinked: [Errno 21] Is a directory
    track = Track("/music/song.wav", "song", 1234, {n: str(out / f"{n}.wav") for n in STEMS}, str(done))
    options = Options(0.0, None, None, 0.0, None, False, None, "wav", 16, "rescale", "m", "sha", {},
                      None, None, None)
    with pytest.raises(AudioError) as caught:
        store(track, [torch.full((2, 1, 800), 0.25)], 8000, 1, list(STEMS), options)
    message = str(caught.value)
    assert message.startswith(f"{done}: cannot write (")
    assert "None" not in message
    assert sorted(p.name for p in out.iterdir()) == [records.DONE_NAME]  # no stem, lock or partial file left

