"""TAK as a whole: variants, the text relation to GA, priors flowing from the run."""

from __future__ import annotations

import json

import pytest
import torch

from bench.cli import main
from bench.core.labels import BTCV_13
from methods.magicnet import GA
from methods.tak import RELEASED_PRIOR_NORM, TAK, TAKNames, TAKNoContrast, TAKNoText, scale_prior
from priors.cache import prior_embeddings
from tests.helpers import random_batch, tiny_context
from tests.test_methods import PATCH, _hash_priors


def _ctx():
    ctx = tiny_context(patch=PATCH, width=4, priors=_hash_priors)
    ctx.iterations = 8
    return ctx


def test_tak_without_text_parts_builds_exactly_ga():
    ctx = _ctx()
    torch.manual_seed(0)
    ga = GA(ctx)
    torch.manual_seed(0)
    # TAK's released pseudo-label source (the teacher) and epoch-wise ramp differ from GALoss';
    # with GA's, and without its text parts, TAK is GA exactly
    tak = TAK(ctx, text_head=False, contrast_weight=0.0, pl_source="student", consistency_epoch=350)
    for a, b in zip(ga.networks["net"].state_dict().items(), tak.networks["net"].state_dict().items()):
        assert a[0] == b[0] and torch.equal(a[1], b[1])
    labeled, unlabeled = random_batch(ctx)
    for step in (0, 150):
        torch.manual_seed(step)
        lg = ga.training_step(labeled, unlabeled, step)
        torch.manual_seed(step)
        lt = tak.training_step(labeled, unlabeled, step)
        assert lg.parts.keys() == lt.parts.keys()
        for k in lg.parts:
            torch.testing.assert_close(lg.parts[k], lt.parts[k])


def test_contrastive_term_appears_after_warmup_and_reaches_encoder_and_projections():
    ctx = _ctx()
    torch.manual_seed(0)
    tak = TAK(ctx, contrast_start_epoch=0)
    labeled, unlabeled = random_batch(ctx)
    early = tak.training_step(labeled, unlabeled, 0)  # contrast starts once the epoch exceeds 0
    assert "contrast" not in early.parts
    losses = tak.training_step(labeled, unlabeled, max(1, ctx.n_unlabeled))
    assert losses.parts["contrast"] > 0
    net = tak.networks["net"]
    params = {
        "encoder": list(net.backbone.enc.parameters()),
        "voxel projections": list(net.voxel_proj.parameters()),
        "text projections": [p for m in net.text_proj for p in m.parameters()] + list(net.head.text_to_hidden.parameters()),
    }
    for what, ps in params.items():
        grads = torch.autograd.grad(losses.parts["contrast"], ps, allow_unused=True, retain_graph=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads), what


def test_variants():
    ctx = _ctx()
    assert TAKNoContrast(ctx).use_contrast is False
    # tak_names fixes the prompt set and takes the run's encoders; tak takes both from the run
    assert TAKNames.text_priors.grid(["anatomy", "shape_only"], ["minilm", "hash"]) == [("names", "minilm"), ("names", "hash")]
    assert TAK.text_priors.grid(["a", "b"], ["e"]) == [("a", "e"), ("b", "e")] and not TAK.text_priors.fixed
    # the engine passes tak_no_text its fixed priors (hash vectors without meaning), whatever --prompts says
    spec = TAKNoText.text_priors
    assert spec.fixed and (spec.prompts, spec.encoder) == ("anatomy", "hash:512")
    no_text = TAKNoText(tiny_context(patch=PATCH, width=4, priors=lambda: prior_embeddings(spec.prompts, spec.encoder, BTCV_13)))
    assert no_text.networks["net"].head.prior.shape == (2 * 14, 512)  # hash vectors, 2 views


def test_prompt_encoder_grid_expands_runs(tmp_path, capsys):
    out = tmp_path / "runs"
    argv = ["run", "--methods", "tak,tak_names", "--preset", "tiny", "--out", str(out), "--no-progress",
            "--prompts", "anatomy,location_only", "--text-encoder", "hash,hash:16", "--set", "patch=32,32,64",
            "--set", "iterations=1", "--set", "val_every=0"]
    assert main(argv) == 0
    # before any training, one line per TAK-family method says the run is shorter than its slow start
    lines = capsys.readouterr().out.splitlines()
    first_run = next(i for i, line in enumerate(lines) if line.startswith("[1/"))
    notes = [line for line in lines[:first_run] if line.startswith("note: ")]
    assert [n.split()[1] for n in notes] == ["tak", "tak_names"] and all(" in 1 steps: " in n and "600 steps or more" in n for n in notes)
    metrics = [json.loads(p.read_text()) for p in out.rglob("metrics.json")]
    pairs = sorted((m["method"], m["prompts"], m["text_encoder"]) for m in metrics)
    assert pairs == sorted(
        [("tak", p, e) for p in ("anatomy", "location_only") for e in ("hash", "hash:16")]
        + [("tak_names", "names", e) for e in ("hash", "hash:16")]
    )


@pytest.mark.parametrize("methods, iterations, noted", [("tak,dhc", 220, ["tak"]), ("tak,dhc", 600, []), ("mean_teacher", 4, [])])
def test_slow_start_notice_only_for_runs_shorter_than_the_known_start(methods, iterations, noted, tmp_path):
    from bench.runner import RunRequest, resolve, slow_start_notes

    req = RunRequest.build({"methods": methods, "preset": "demo", "iterations": iterations}, out=str(tmp_path))
    notes = slow_start_notes(resolve(req))
    assert [n.split()[1] for n in notes] == noted
    assert all(n.startswith(f"note: tak in {iterations} steps: {TAK.slow_start}.") for n in notes)


def test_unknown_prompts_or_encoder_refused_before_any_run(tmp_path, capsys):
    for flag, value, msg in (("--prompts", "anatomi", "did you mean 'anatomy'"), ("--text-encoder", "minilmm", "did you mean 'minilm'")):
        assert main(["run", "--methods", "tak", "--preset", "tiny", "--out", str(tmp_path), flag, value]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1
    assert not list(tmp_path.rglob("seed_*"))


def test_encoder_dimension_mismatch_with_stored_checkpoint(tmp_path, capsys):
    out = tmp_path / "runs"
    base = ["run", "--methods", "tak", "--preset", "tiny", "--out", str(out), "--no-progress", "--set", "patch=32,32,64",
            "--set", "val_every=0", "--text-encoder", "hash:16"]
    assert main(base + ["--set", "iterations=2"]) == 0
    ckpt = next(out.rglob("checkpoint.pt"))
    # another encoder width would resume into the same folder only if the config hash matched;
    # simulate a stale folder by copying the checkpoint into the folder of a hash:32 run
    assert main(base[:-1] + ["hash:32", "--set", "iterations=2", "--set", "ckpt_every=1"]) == 0
    target = [p for p in out.rglob("checkpoint.pt") if p != ckpt][0]
    target.write_bytes(ckpt.read_bytes())
    (target.parent / "metrics.json").unlink()
    assert main(base[:-1] + ["hash:32", "--set", "iterations=2", "--set", "ckpt_every=1"]) == 2
    err = capsys.readouterr().err
    assert "does not fit this model" in err and "--text-encoder" in err


def test_released_amos_tensor_drives_the_head():
    from tests.test_priors import TAK_FILE

    if not TAK_FILE.exists():
        pytest.skip("shared reference file not present")
    from bench.core.labels import AMOS_15
    from priors.cache import prior_embeddings

    ctx = tiny_context(num_classes=16, patch=PATCH, width=4, priors=lambda: prior_embeddings("anatomy", f"file:{TAK_FILE}", AMOS_15))
    ctx.class_names = AMOS_15
    tak = TAK(ctx)
    head = tak.networks["net"].head
    assert head.prior.shape == (32, 512) and head.n_views == 2
    assert head.text_to_hidden[0].in_features == 512
    # the released tensor is its own scale: the prior_norm factor is 1 for it (to 2e-5)
    released = torch.load(TAK_FILE, map_location="cpu", weights_only=True).float()
    assert released.norm(dim=1).mean().item() == pytest.approx(RELEASED_PRIOR_NORM, abs=5e-4)
    torch.testing.assert_close(head.prior, released, rtol=2e-4, atol=0)


@pytest.mark.parametrize("norm, expected", [(6.0, [[6.0, 8.0], [0.0, 2.0]]), ("encoder", [[3.0, 4.0], [0.0, 1.0]])])
def test_scale_prior_hand_case(norm, expected):
    # row norms 5 and 1: mean 3; to 6 -> factor 2; "encoder" leaves the encoder's scale
    prior = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    torch.testing.assert_close(scale_prior(prior, norm), torch.tensor(expected))


@pytest.mark.parametrize("setting, norm", [({}, 1.0), ({"prior_norm": RELEASED_PRIOR_NORM}, RELEASED_PRIOR_NORM)])
def test_tak_prior_enters_the_head_at_the_encoders_scale_or_the_released_tensors(setting, norm):
    # hash priors have unit rows, like minilm's: kept by default (as the release loads its tensor),
    # scaled to the released tensor's mean row norm with prior_norm=4.785
    head = TAK(_ctx(), **setting).networks["net"].head
    assert head.prior.norm(dim=1).mean().item() == pytest.approx(norm, rel=1e-5)


def test_kaiming_all_reaches_the_head_and_projections():
    """tak with init="kaiming_all": every Conv3d of student and teacher (backbone, head controller,
    projections) has zero bias; the Linear text projections keep PyTorch's init."""
    import torch.nn as nn

    m = TAK(_ctx(), init="kaiming_all")
    for net in (m.networks["net"], m.teachers["teacher"]):
        convs = [mod for mod in net.modules() if isinstance(mod, nn.Conv3d)]
        assert convs and all(c.bias is None or not c.bias.any() for c in convs)
        assert any(isinstance(mod, nn.Linear) and mod.bias.abs().sum() > 0 for mod in net.modules())
    head = m.networks["net"].head.controller
    assert abs(head.weight.std().item() / (2 / head.weight[0].numel()) ** 0.5 - 1) < 0.1


@pytest.mark.parametrize("width, shared", [(16, [False, False, True]), (8, [False, False, False])])
def test_contrastive_branch_shares_text_to_256_at_the_released_width(width, shared):
    """At TAK's width 16 the x5 scale (256 channels) uses the head's own text projection, as
    released (``text_to_256``); at width 8 every scale has its own."""
    import torch.nn as nn

    from methods.tak import TAKNetwork

    net = TAKNetwork(14, width, 32, 8, torch.randn(2 * 14, 384), True)
    assert [isinstance(p, nn.Identity) for p in net.text_proj] == shared
    if width == 16:
        assert torch.equal(net.text_embeddings()[2], net.head.text_hidden())


@pytest.mark.parametrize("teacher_init", ["independent", "copy"])
def test_magicnet_family_teacher_is_a_second_init_as_released(teacher_init):
    """MagicNet and TAK build the EMA model with a second create_model(ema=True) call: an
    independent random init (the default); "copy" copies the student. No gradient either way."""
    torch.manual_seed(0)
    m = GA(_ctx(), teacher_init=teacher_init)
    student, teacher = m.networks["net"], m.teachers["teacher"]
    same = all(torch.equal(a, b) for a, b in zip(student.parameters(), teacher.parameters()))
    assert same == (teacher_init == "copy") and not any(p.requires_grad for p in teacher.parameters())
