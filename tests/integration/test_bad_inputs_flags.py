"""Bad-input corpus, part 2: flag values refused at parse time (before any model is loaded), and
the help text every flag must have."""

from __future__ import annotations

import argparse

import pytest
import torch

from tests.integration.bad_inputs_common import debug_model, image, run_bad  # noqa: F401
from vlmkit.cli import build_parser, main
from vlmkit.cli_types import GREEDY_BELOW

GENERATE = {
    "temperature_nan": (["--temperature", "nan"], "--temperature: must be a finite"),
    "temperature_inf": (["--temperature", "inf"], "--temperature: must be a finite"),
    "temperature_negative": (["--temperature", "-0.5"], "--temperature: must be >= 0"),
    "temperature_word": (["--temperature", "hot"], "--temperature: expected a number"),
    "seed_over_2_64": (["--seed", str(2**64)], "--seed: must be in [0, 2**64 - 1]"),
    "seed_negative": (["--seed", "-1"], "--seed: must be in"),
    "seed_float": (["--seed", "1.5"], "--seed: expected an integer"),
    "top_p_zero": (["--top-p", "0"], "--top-p: must be in (0, 1]"),
    "top_p_over_one": (["--top-p", "1.01"], "--top-p: must be in (0, 1]"),
    "top_p_nan": (["--top-p", "nan"], "--top-p: must be a finite"),
    "top_k_negative": (["--top-k", "-1"], "--top-k: must be >= 0"),
    "top_k_word": (["--top-k", "ten"], "--top-k: expected an integer"),
    "max_new_tokens_zero": (["--max-new-tokens", "0"], "--max-new-tokens: must be >= 1"),
    "max_new_tokens_negative": (["--max-new-tokens", "-3"], "--max-new-tokens: must be >= 1"),
    "max_new_tokens_float": (["--max-new-tokens", "1e3"], "--max-new-tokens: expected an integer"),
    "max_frames_zero": (["--max-frames", "0"], "--max-frames: must be >= 1"),
    "frame_stride_zero": (["--frame-stride", "0"], "--frame-stride: must be >= 1"),
    "device_tpu": (["--device", "tpu9"], "unknown device 'tpu9'"),
    "device_cpu_index": (["--device", "cpu:1"], "unknown device"),
    "device_empty": (["--device", ""], "unknown device"),
    "device_cuda_index_word": (["--device", "cuda:x"], "cuda"),
    "task_unknown": (["--task", "poem"], "invalid choice: 'poem'"),
    "flag_unknown": (["--bogus"], "unrecognized arguments: --bogus"),
    "flag_missing_value": (["--temperature"], "expected one argument"),
    "dtype_unknown": (["--dtype", "float8"], "unknown dtype 'float8'"),
}


@pytest.mark.parametrize("case", sorted(GENERATE))
def test_bad_generate_flag(case, debug_model, image, tmp_path, capsys):
    flags, cause = GENERATE[case]
    run_bad(capsys, ["generate", "--model", debug_model, "--image", image, "--prompt", "x", *flags],
            cause, tmp_path, debug_model)


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:7"])
def test_missing_cuda_device(device, debug_model, image, tmp_path, capsys):
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if int(device.partition(":")[2] or 0) < count:
        pytest.skip(f"{device} exists on this machine")
    run_bad(capsys, ["generate", "--model", debug_model, "--image", image, "--prompt", "x", "--device", device],
            "cuda", tmp_path, debug_model)


def test_missing_mps_device(debug_model, image, tmp_path, capsys):
    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    run_bad(capsys, ["generate", "--model", debug_model, "--image", image, "--prompt", "x", "--device", "mps"],
            "mps is not available", tmp_path, debug_model)


OTHER = {
    "synth_num_scenes_zero": (["data", "synth", "{out}", "--num-scenes", "0"], "--num-scenes: must be >= 1"),
    "synth_image_size_tiny": (["data", "synth", "{out}", "--image-size", "3"], "--image-size: must be in"),
    "synth_image_size_huge": (["data", "synth", "{out}", "--image-size", "100000"], "--image-size: must be in"),
    "synth_seed_negative": (["data", "synth", "{out}", "--seed", "-2"], "--seed: must be in"),
    "synth_no_out": (["data", "synth"], "required: out"),
    "data_no_subcommand": (["data"], "required: data_cmd"),
    "create_seed_word": (["create", "{out}", "--seed", "abc"], "--seed: expected an integer"),
    "create_unknown_preset": (["create", "{out}", "--preset", "giant"], "unknown paligemma preset 'giant'"),
    "demo_num_scenes_zero": (["demo", "--out", "{out}", "--num-scenes", "0"], "--num-scenes: must be >= 1"),
    "demo_questions_negative": (["demo", "--out", "{out}", "--questions", "-1"], "--questions: must be >= 0"),
    "demo_max_new_tokens_zero": (["demo", "--out", "{out}", "--max-new-tokens", "0"], "--max-new-tokens"),
    "demo_device_tpu": (["demo", "--out", "{out}", "--device", "tpu9"], "unknown device"),
    "eval_batch_size_zero": (["eval", "--data", "{out}", "--task", "vqa", "--batch-size", "0"], "--batch-size"),
    "eval_limit_negative": (["eval", "--data", "{out}", "--task", "vqa", "--limit", "-4"], "--limit: must be"),
    "eval_task_unknown": (["eval", "--data", "{out}", "--task", "poetry"], "invalid choice"),
    "eval_missing_data": (["eval", "--task", "vqa"], "required: --data"),
    "info_no_model": (["info", "--model", "{out}"], "neither a folder nor a bundled model"),
    "no_command": ([], "required: command"),
    "unknown_command": (["frobnicate"], "invalid choice: 'frobnicate'"),
}


@pytest.mark.parametrize("case", sorted(OTHER))
def test_bad_flag_other_commands(case, tmp_path, capsys):
    argv, cause = OTHER[case]
    run_bad(capsys, [a.replace("{out}", str(tmp_path / "out")) for a in argv], cause, tmp_path)


def test_tiny_temperature_is_greedy(debug_model, image, capsys):
    """Documented: temperatures below GREEDY_BELOW (denormals included) decode as greedy, exactly."""
    base = ["generate", "--model", str(debug_model), "--image", str(image), "--prompt", "x",
            "--max-new-tokens", "4", "--json"]
    assert main(base) == 0
    greedy = capsys.readouterr().out
    for t in ("5e-324", "1e-310", f"{GREEDY_BELOW / 2:g}"):
        assert main([*base, "--temperature", t, "--seed", "3"]) == 0
        captured = capsys.readouterr()
        assert captured.err == ""
        assert _ids(captured.out) == _ids(greedy), t


def _ids(out: str) -> list[int]:
    import json

    return json.loads(out)["token_ids"]


def _parsers(parser: argparse.ArgumentParser, prefix="vlmkit"):
    """(name, parser) of every (sub)command, recursively."""
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{prefix} {name}")


# Training subcommands define their flags in vlmkit.training (outside this corpus's scope).
_TRAINING = ("vlmkit train", "vlmkit train-contrastive", "vlmkit experiment")


def test_every_flag_has_help():
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}"
               for name, p in _parsers(build_parser()) if not name.startswith(_TRAINING)
               for a in p._actions if not a.help and not isinstance(a, argparse._SubParsersAction)]
    assert not missing, missing
