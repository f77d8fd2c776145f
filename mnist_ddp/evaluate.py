"""Score a saved model on the test split.

    python -m mnist_ddp.evaluate checkpoint=PATH [out=DIR] [key=value ...]

PATH is a run's model.pt or any snapshot; it decides the model and the split, and nothing else
(data.root, the device, ...: the command line and the defaults). Counting is exact across ranks
under torchrun too. Rank 0 prints accuracy, per-class accuracy and the confusion matrix, and
writes evaluation.json and PNGs to DIR (default: a folder named evaluation beside PATH).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from mnist_ddp.base.atomic import atomic_write_json
from mnist_ddp.base.console import say
from mnist_ddp.base.errors import InputError
from mnist_ddp.config.checks import check_path_names
from mnist_ddp.config.loading import load_config
from mnist_ddp.config.schema import Config
from mnist_ddp.data.splits import load_on_every_rank
from mnist_ddp.model.evaluation import confusion_text, evaluate_across_ranks
from mnist_ddp.model.mlp import build_model
from mnist_ddp.observe import plots
from mnist_ddp.parallel import agreement, launcher
from mnist_ddp.parallel.entry import exit_process, run_command
from mnist_ddp.state.rundir import check_output_folder
from mnist_ddp.state.weights import SavedWeights, check_weights_fit, load_weights_into, model_settings, read_weights


def split_arguments(argv: list[str] | None) -> tuple[Path, Path | None, list[str]]:
    """checkpoint=PATH, out=DIR and the remaining config overrides."""
    parser = argparse.ArgumentParser(
        prog="python -m mnist_ddp.evaluate", description=(__doc__ or "").split("\n\n")[0]
    )  # None under python -OO
    parser.add_argument("args", nargs="*", metavar="checkpoint=PATH | out=DIR | key=value")
    items = parser.parse_args(argv).args
    found = {k: v for k, _, v in (a.partition("=") for a in items) if k in ("checkpoint", "out")}
    if "checkpoint" not in found:
        raise InputError("checkpoint=PATH is required (a run's model.pt or a snapshot)")
    rest = [a for a in items if a.partition("=")[0] not in ("checkpoint", "out")]
    return Path(found["checkpoint"]), Path(found["out"]) if "out" in found else None, rest


def evaluate_checkpoint(
    cfg: Config, launch: launcher.Launch, device: torch.device, saved: SavedWeights, out: Path
) -> dict[str, Any]:
    """Load the weights on every rank, score the test split across ranks, report on rank 0."""
    data = load_on_every_rank(cfg.data, cfg.seed, launch.local_rank, launch.world_size, device)
    agreement.check_ranks_agree(data.fingerprint())
    if saved.in_features != data.in_features:
        raise InputError(
            f"the checkpoint's model takes {saved.in_features} pixels per image, the data has {data.in_features}"
            f" ({data.source}); evaluate it on the data it was trained on (data.dataset)"
        )
    check_weights_fit(lambda: build_model(cfg, data.in_features), saved.state_dict, "checkpoint")
    model = build_model(cfg, data.in_features).to(device)
    load_weights_into(model, saved.state_dict, "checkpoint")
    counts = evaluate_across_ranks(
        model, data.test_images, data.test_labels, cfg.train.eval_batch_size, launch.rank, launch.world_size
    )
    result = {
        "test_accuracy": counts.accuracy,
        "test_loss": counts.loss,
        "test_examples": counts.examples,
        "correct": counts.correct,
        "per_class_accuracy": counts.per_class_accuracy,
        "confusion": counts.confusion,
        "world_size": launch.world_size,
        "data": data.source,
    }
    if launch.rank == 0:
        say(f"{data.source}: {counts.correct}/{counts.examples} correct, accuracy {100 * counts.accuracy:.2f}%")
        say("per-class accuracy: " + "  ".join(f"{c}: {100 * a:.1f}%" for c, a in enumerate(counts.per_class_accuracy)))
        say(confusion_text(counts))
        atomic_write_json(out / "evaluation.json", result)
        plots.write_run_plots(None, counts, model, data.test_images, data.test_labels, out)
        say(f"wrote {out / 'evaluation.json'}, {out / 'confusion_matrix.png'}, {out / 'test_predictions.png'}")
    return result


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (exit codes as for training)."""
    context: dict[str, Any] = {}

    def parse() -> Config:
        checkpoint, out, overrides = split_arguments(argv if argv is not None else sys.argv[1:])
        check_path_names(f"checkpoint={checkpoint}", str(checkpoint))
        saved = read_weights(checkpoint)
        context.update(saved=saved, out=out or checkpoint.parent / "evaluation")
        check_output_folder(context["out"], "out")
        # The checkpoint describes the model; data location, device and backend are the user's.
        return load_config(overrides=overrides, base=model_settings(saved.config))

    return run_command(
        parse,
        lambda cfg, launch, device, _: evaluate_checkpoint(cfg, launch, device, context["saved"], context["out"]),
        command="evaluate",
    )


if __name__ == "__main__":
    exit_process(main())
