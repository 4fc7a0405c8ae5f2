"""A run SIGKILLed at a chosen point of each phase and resumed computes exactly what an
uninterrupted run computes, with samples switched on.

Kill points are deterministic and driven from the test side: a child process trains and kills
itself (SIGKILL: no handler, no cleanup) at one event:

    before_first_checkpoint  right after step 2's samples are written, no checkpoint yet
    right_after_checkpoint   right after checkpoint 3 is complete
    mid_interval             after step 5's update (between checkpoints 3 and 6, samples of 4 done)
    inside_checkpoint_write  while checkpoint 6 is being written (one file on disk, the next being opened)
    inside_samples_write     while step 4's samples are being written (one of two images on disk)

Only what the resumed run computed itself is compared with the uninterrupted run: the losses of the
steps after the checkpoint it resumed from, the sample images it rendered, and the final LoRA
tensors. (The losses before that checkpoint are read back from it, so comparing them would only
compare a value with its own copy.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from persona_ml.training import train_lora
from persona_ml.training.config import load_train_config
from persona_ml.training.testing import make_synthetic_dataset
from persona_ml.training.types import JobStatus

STEPS = 8
EVERY = 3          # checkpoints at 3 and 6
SAMPLES_EVERY = 2  # samples at 2, 4, 6 and 8

# Kills itself at the chosen event. The hooks sit on public seams (progress events, torch.save,
# PIL's Image.save) so that they keep working when the trainer's internals move.
CHILD = textwrap.dedent("""
    import json, os, signal, sys
    import torch
    torch.set_num_threads(1)
    from PIL import Image
    from persona_ml.training import train_lora
    from persona_ml.training.config import load_train_config
    args = json.loads(sys.argv[1])
    phase, at = args["phase"], args["step"]

    def die(what):
        print("KILLED", what, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    def on_event(e):
        print("EVENT", e.kind, e.step, e.loss if e.kind == "step" else "", flush=True)
        if phase == "event" and e.kind == args["kind"] and e.step == at:
            die(f"{e.kind} {e.step}")

    if phase == "checkpoint_write":
        # die as the second file of checkpoint `at` is opened for writing: one file complete, the rest not
        # (whether the trainer writes with open(), torch.save or anything else that opens a Python file)
        import builtins
        real_open = builtins.open
        def guarded_open(file, mode="r", *a, **k):
            folder = os.path.dirname(str(file))
            name = os.path.basename(folder)
            if any(c in str(mode) for c in "wxa") and name.startswith(f".step-{at:06d}.") and name.endswith(".tmp"):
                done = sorted(n for n in os.listdir(folder) if not n.startswith("."))
                if done:
                    die(f"inside checkpoint {at} write: {done} on disk, opening {os.path.basename(str(file))}")
            return real_open(file, mode, *a, **k)
        builtins.open = guarded_open
        real_save = torch.save
        def save(obj, f, *a, **k):  # torch.save straight to a path inside the checkpoint folder
            if isinstance(f, (str, os.PathLike)):
                guarded_open(f, "wb").close()
            return real_save(obj, f, *a, **k)
        torch.save = save
    if phase == "samples_write":
        real_image_save = Image.Image.save
        saved = []
        def image_save(self, fp, *a, **k):
            if f"step-{at:06d}" in str(fp) and "samples" in str(fp):
                if saved:  # the first image is complete; die as the second one is written
                    die(f"inside samples {at} write, before {os.path.basename(str(fp))}")
                saved.append(fp)
            return real_image_save(self, fp, *a, **k)
        Image.Image.save = image_save

    train_lora(load_train_config("tiny-cpu", args["overrides"]), args["data"], args["out"], on_event=on_event)
    print("FINISHED", flush=True)
    sys.exit(3)  # never reached: the kill comes first
""")

# name -> (how the child dies, the checkpoint the resumed run must start from)
KILL_POINTS = {
    "before_first_checkpoint": ({"phase": "event", "kind": "samples", "step": 2}, None),
    "right_after_checkpoint": ({"phase": "event", "kind": "checkpoint", "step": 3}, 3),
    "mid_interval": ({"phase": "event", "kind": "step", "step": 5}, 3),
    "inside_checkpoint_write": ({"phase": "checkpoint_write", "step": 6}, 3),
    "inside_samples_write": ({"phase": "samples_write", "step": 4}, 3),
}


@pytest.fixture(scope="module")
def one_thread():
    """Same thread count in this process and the child: float reductions then match bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    tmp = tmp_path_factory.mktemp("resume")
    data = make_synthetic_dataset(tmp / "prepared", n=2, size=64)
    overrides = [f"cache.dir={tmp / 'cache'}", f"steps={STEPS}", f"checkpoint.every={EVERY}", "checkpoint.keep_last=3",
                 f"samples.every={SAMPLES_EVERY}", "samples.steps=2", "samples.width=32", "samples.height=32",
                 "samples.seeds=[7, 8]", "data.resolutions=[32, 64]", "optimizer.lr=1e-2"]
    events: list = []
    reference = train_lora(load_train_config("tiny-cpu", overrides), data.root, tmp / "reference",
                           on_event=events.append)
    assert reference.status is JobStatus.COMPLETED and len(reference.losses) == STEPS
    assert [e.step for e in events if e.kind == "samples"] == [2, 4, 6, 8]
    assert [e.step for e in events if e.kind == "checkpoint"] == [3, 6]
    ref_lora = load_file(str(reference.lora_path))
    assert any(t.abs().sum() > 0 for k, t in ref_lora.items() if "lora_B" in k), "the LoRA never trained"
    return data, overrides, reference, ref_lora


def _samples(run_dir, step):
    folder = run_dir / "samples" / f"step-{step:06d}"
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_killed_then_resumed_run_computes_what_the_uninterrupted_run_computes(point, setup, tmp_path):
    data, overrides, reference, ref_lora = setup
    kill, resume_from = KILL_POINTS[point]
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    child = subprocess.run([sys.executable, "-c", CHILD, json.dumps({**kill, "overrides": overrides,
                                                                     "data": str(data.root), "out": str(out)})],
                           env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, f"{point}: exit {child.returncode}\n{child.stderr[-3000:]}"
    assert "KILLED" in child.stdout and "FINISHED" not in child.stdout
    assert not (out / "lora").exists() and not (out / "result.json").exists()
    child_losses = [float(line.split()[3]) for line in child.stdout.splitlines() if line.startswith("EVENT step")]
    done_steps = sorted(int(p.name[5:]) for p in (out / "checkpoints").glob("step-*") if (p / "meta.json").is_file())
    assert done_steps == ([resume_from] if resume_from else []), f"{point}: complete checkpoints {done_steps}"
    if point == "inside_checkpoint_write":  # the half-written checkpoint is on disk, under a temp name only
        partial = list((out / "checkpoints").glob(".step-000006.*.tmp"))
        assert len(partial) == 1, partial
        written = sorted(p.name for p in partial[0].iterdir() if not p.name.startswith("."))
        assert len(written) == 1 and written[0] in ("adapter.safetensors", "state.pt"), written
        assert not (partial[0] / "meta.json").exists()
    if point == "inside_samples_write":
        folder = out / "samples" / "step-000004"
        assert [p.name for p in folder.glob("p*.png")] == ["p0_s7.png"] and not (folder / "adapter.safetensors").exists()

    events: list = []
    resumed = train_lora(load_train_config("tiny-cpu", overrides), data.root, out, resume=True, on_event=events.append)
    assert resumed.status is JobStatus.COMPLETED
    assert resumed.resumed_from == resume_from, point
    start = resume_from or 0
    computed = [e.step for e in events if e.kind == "step"]
    assert computed == list(range(start + 1, STEPS + 1)), f"{point}: the resumed run stepped through {computed}"
    assert len(resumed.losses) == STEPS
    # the steps this run computed: identical to the uninterrupted run, bit for bit
    assert resumed.losses[start:] == reference.losses[start:], point
    # the losses read back from the checkpoint are those the killed child computed (restore fidelity)
    assert resumed.losses[:start] == child_losses[:start], point
    rendered = [e.step for e in events if e.kind == "samples"]
    assert rendered == [s for s in (2, 4, 6, 8) if s > start], f"{point}: samples rendered at {rendered}"
    for step in rendered:
        assert _samples(out, step) == _samples(reference.output_dir, step), f"{point}: samples of step {step} differ"
        assert len(_samples(out, step)) == 2
    got = load_file(str(resumed.lora_path))
    assert got.keys() == ref_lora.keys()
    differing = [k for k in ref_lora if not torch.equal(ref_lora[k], got[k])]
    assert not differing, f"{point}: {len(differing)} final tensors differ, e.g. {differing[:3]}"
    complete = sorted(int(p.name[5:]) for p in (out / "checkpoints").glob("step-*") if (p / "meta.json").is_file())
    assert complete == [3, 6], f"{point}: checkpoints after the resumed run: {complete}"
