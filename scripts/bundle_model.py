#!/usr/bin/env python
"""Copy trained target models into the package as the bundled default model.

    python scripts/bundle_model.py [--last [--average] | --best-of RUN ...] [--half] TRAIN_OUTPUT [DEST]

Takes ``<target>.safetensors`` and ``<target>.json`` (the best-validation
weights ``umx-train`` keeps) for vocals, drums, bass and other, writes
``separator.json``, and checks that the folder loads into a Separator and stays
within the 40 MB the package allows for bundled weights. DEST is replaced as a
whole, and only once the new folder has passed these checks. With ``--last`` the
weights come from ``<target>.chkpnt`` instead: those of the last epoch trained,
to start a further stage from; with ``--last --average``, the weight average of
a run trained with ``--ema`` at its last epoch. With ``--best-of RUN`` (any
number of times) each target's best weights come from whichever of
TRAIN_OUTPUT and the RUNs recorded the lowest validation loss (a run without
that target is passed over); the runs must have validated on the same tracks
(their ``valid/`` folders list the same names). With ``--half`` the weights are
stored as float16 (half the size; they are loaded back into float32 models, and
the script checks that the bundle then separates a test signal as the float32
weights do, within -60 dB). ``--input-level DB`` records the level the models
were trained at (level matching, docs/inference.md); by default DEST's own is
kept (the bundled model's: -16.5 dBFS, the training mixtures' median), and
``--input-level off`` records none.
"""
import argparse
import copy
import shutil
from pathlib import Path

import torch
from safetensors.torch import save

from openunmix_like import Separator
from openunmix_like.fileio import write_bytes_atomic, write_json_atomic
from openunmix_like.level import check_input_level
from openunmix_like.errors import ModelError
from openunmix_like.modeldir import (FORMAT, AudioSettings, model_input_level, read_state_dict, read_target_json,
                                     update_separator_json)
from openunmix_like.training import read_checkpoint

TARGETS = ("vocals", "drums", "bass", "other")
LIMIT = 40 * 2 ** 20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("train_output", help="umx-train --output folder")
    p.add_argument("dest", nargs="?", default="openunmix_like/models/default")
    p.add_argument("--last", action="store_true", help="weights of the last epoch (.chkpnt), not the best")
    p.add_argument("--average", action="store_true", help="with --last: the checkpoint's weight average (--ema)")
    p.add_argument("--best-of", action="append", default=[], metavar="RUN",
                   help="another umx-train --output folder validated on the same tracks; per target the run "
                        "with the lowest validation loss is taken")
    p.add_argument("--half", action="store_true", help="store the weights as float16 (half the size)")
    p.add_argument("--input-level", default="keep", metavar="keep|off|DB",
                   help="the training level recorded for level matching (default: DEST's own)")
    # Intermixed: DEST may follow the options (`RUN --best-of OTHER DEST`), as the recipe writes it.
    args = p.parse_intermixed_args()
    if args.average and not args.last:
        p.error("--average takes the last epoch's weight average: give --last too")
    if args.best_of and args.last:
        p.error("--best-of compares the best weights of runs: drop --last")
    src, dest = Path(args.train_output), Path(args.dest)
    try:
        level = recorded_level(args.input_level, dest)
    except ValueError as exc:
        p.error(f"--input-level: {exc}")
    chosen = choose_runs([src, *map(Path, args.best_of)])
    # Assembled and checked beside DEST, then swapped in: a failure leaves DEST as it was.
    work = dest.parent / f".{dest.name}.bundling"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    full_states = {}  # with --half: the float32 weights, to compare the bundle with
    try:
        for target in TARGETS:  # separator.json lists the targets in this order
            run = chosen[target]
            shutil.copyfile(run / f"{target}.json", work / f"{target}.json")
            if args.last:
                checkpoint = read_checkpoint(run / f"{target}.chkpnt")
                if args.average and "average" not in checkpoint:
                    raise SystemExit(f"{run / f'{target}.chkpnt'}: no weight average (trained without --ema); "
                                     "drop --average")
                state = {k: v.contiguous() for k, v in checkpoint["average" if args.average else "state_dict"].items()}
            elif args.half:
                state = read_state_dict(run / f"{target}.safetensors")
            else:
                shutil.copyfile(run / f"{target}.safetensors", work / f"{target}.safetensors")
            if args.half:
                full_states[target] = state
                state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
            if args.last or args.half:
                write_bytes_atomic(work / f"{target}.safetensors", save(state, metadata={"format": FORMAT}))
            # Refuses a target whose run used other audio settings than the targets before it.
            update_separator_json(work, target, AudioSettings.from_json(read_target_json(run / "separator.json")))
        if level is not None:
            held = read_target_json(work / "separator.json")
            write_json_atomic(work / "separator.json", {**held, "input_level": level})
        size = sum(p.stat().st_size for p in work.glob("*.safetensors"))
        if size > LIMIT:
            raise SystemExit(f"{src}: {size / 2 ** 20:.1f} MB of weights, over the 40 MB limit; {dest} left as it was")
        separator = Separator.from_pretrained(str(work), precision="fp32")
        if args.half:
            check_half(separator, full_states, work)
    except ModelError as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise SystemExit(f"cannot bundle these runs together ({dest} left as it was): {exc}") from exc
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    old = dest.parent / f".{dest.name}.replaced"
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    work.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    sources = ", ".join(f"{t} ({chosen[t]})" for t in TARGETS) if args.best_of else ", ".join(TARGETS)
    print(f"bundled {sources} into {dest} ({size / 2 ** 20:.1f} MB)")


def recorded_level(value: str, dest: Path):
    """The level to record: DEST's own for ``keep`` (none if it has none), none for ``off``, else the number."""
    if value == "keep":
        return model_input_level(dest) if (dest / "separator.json").exists() else None
    return None if value == "off" else check_input_level(value)


def check_half(half: Separator, states: dict, work: Path) -> None:
    """Refuse a float16 bundle whose output differs from that of the float32 weights (``states``, per
    target) by more than -60 dB."""
    full = copy.deepcopy(half)
    for target, model in full.target_models.items():
        model.load_state_dict(states[target])
    audio = torch.randn(1, half.nb_channels, int(half.sample_rate * 4), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a, b = half.eval()(audio * 0.1), full(audio * 0.1)
    error = 10 * torch.log10((a - b).square().sum() / b.square().sum().clamp_min(1e-20))
    if not error <= -60:  # NaN too (float16 overflow)
        raise SystemExit(f"{work}: float16 weights change the output by {error:.1f} dB (limit -60 dB); "
                         "bundle without --half")


def choose_runs(runs: list) -> dict:
    """Per target, the run whose recorded best validation loss is lowest (the first run on a tie)."""
    if len(runs) == 1:
        return {t: runs[0] for t in TARGETS}
    tracks = [validation_tracks(run) for run in runs]
    for run, names in zip(runs[1:], tracks[1:]):
        if names != tracks[0]:
            raise SystemExit(f"{run}: validated on other tracks than {runs[0]}; their losses do not compare")
    chosen = {}
    for target in TARGETS:
        # A run that did not train this target (a stage that left it out) is not a candidate for it.
        holding = [run for run in runs if (run / f"{target}.json").exists()]
        if not holding:
            raise SystemExit(f"{runs[0]}: no {target} model in it or in the --best-of runs; train {target} first")
        losses = [read_target_json(run / f"{target}.json").get("best_loss") for run in holding]
        if any(loss is None for loss in losses):
            raise SystemExit(f"{holding[losses.index(None)] / f'{target}.json'}: no best validation loss recorded")
        chosen[target] = holding[losses.index(min(losses))]
    return chosen


def validation_tracks(run: Path) -> list:
    """The names of the validation tracks the run's first target JSON says it used (its ``--root``'s
    ``valid/``)."""
    first = next((run / f"{t}.json" for t in TARGETS if (run / f"{t}.json").exists()), run / "vocals.json")
    args = read_target_json(first).get("args", {})
    if args.get("dataset") != "trackfolder_fix" or not args.get("root"):
        raise SystemExit(f"{run}: --best-of compares trackfolder_fix runs; this one used {args.get('dataset')}")
    return sorted(d.name for d in (Path(args["root"]) / "valid").iterdir())


if __name__ == "__main__":
    main()
