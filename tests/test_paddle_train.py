"""Training on the Paddle runtime against torch (fp32): one step's loss and every gradient
vs transformers' LlamaForCausalLM (llama GQA) and the torch Baichuan2 re-implementation in
reference_models.py (7B RoPE, 13B ALiBi), within 1e-4 relative (max|diff| / max|torch| per
tensor); 20 AdamW steps (warmup + cosine, weight decay, clipping) track torch's loss curve
within 1e-3 relative; accumulation, schedules, and the errors."""

import math

import numpy as np
import pytest
import reference_models as rm
import torch

pytest.importorskip("paddle")

from llmc.compile import build_graph  # noqa: E402
from llmc.frontends import fixtures  # noqa: E402
from llmc.frontends.config import parse_config  # noqa: E402
from llmc.frontends.naming import naming_for  # noqa: E402
from llmc.runtime.paddle import (  # noqa: E402
    TrainConfig, Trainer, TrainingError, lr_factor)

ARCHES = ["llama_gqa", "baichuan2_7b", "baichuan2_13b"]
TOL = 1e-4


def setup(arch, last_token_only=False):
    cfg = parse_config(fixtures.tiny_config(arch))
    g = build_graph(cfg, naming_for(cfg.source_format), "full", last_token_only=last_token_only)
    w = fixtures.random_weights(arch, seed=0)
    return cfg, g, {k: w[k] for k in g.params}


def batch(cfg, seed, shape=(2, 8)):
    ids = np.random.default_rng(seed).integers(0, cfg.vocab_size, shape)
    labels = ids.copy()
    labels[0, :3] = -100  # a masked prompt
    return {"input_ids": ids, "labels": labels}


class TorchModel:
    """The torch side: named parameters and a loss with transformers' label convention."""

    def __init__(self, arch, weights, tmp_path):
        self.arch = arch
        if arch in rm.BAICHUAN_ARCHES:
            self.ref = rm.ReferenceDecoder(rm.DecoderSpec.from_config(
                fixtures.tiny_config(arch), arch), weights)
            self.params = self.ref.w
            for t in self.params.values():
                t.requires_grad_(True)
        else:
            fixtures.write_fixture(tmp_path, arch, "hf")
            self.hf = rm.load_hf_model(tmp_path).train()
            self.params = dict(self.hf.named_parameters())

    def loss(self, b):
        ids, labels = torch.as_tensor(b["input_ids"]), torch.as_tensor(b["labels"])
        if self.arch not in rm.BAICHUAN_ARCHES:
            return self.hf(input_ids=ids, labels=labels).loss
        logits = type(self.ref).forward.__wrapped__(self.ref, ids)  # forward without no_grad
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
            ignore_index=-100)


def rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.mark.parametrize("arch", ARCHES)
def test_one_step_loss_and_every_gradient_match_torch(arch, tmp_path):
    cfg, g, w = setup(arch)
    b = batch(cfg, 0)
    trainer = Trainer(g, w, TrainConfig())
    loss, n = trainer.loss_sum(b["input_ids"], b["labels"])
    (loss / n).backward()
    tm = TorchModel(arch, w, tmp_path)
    tloss = tm.loss(b)
    tloss.backward()
    assert abs(float(loss / n) - tloss.item()) <= TOL * abs(tloss.item())
    assert set(tm.params) == set(trainer.program.params)
    for name, p in trainer.program.params.items():
        assert rel(p.grad.numpy(), tm.params[name].grad.numpy()) < TOL, name
    tnorm = torch.nn.utils.clip_grad_norm_(list(tm.params.values()), 1e9)
    assert abs(trainer.grad_norm() - float(tnorm)) <= TOL * float(tnorm)


def torch_curve(tm, cfg: TrainConfig, batches):
    params = list(tm.params.values())
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cfg.lr_at(s) / cfg.lr)
    losses = []
    for b in batches:
        loss = tm.loss(b)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(float(loss))
    return losses


@pytest.mark.parametrize("arch", ["llama_gqa", "baichuan2_13b"])
def test_twenty_adamw_steps_track_torch(arch, tmp_path):
    cfg, g, w = setup(arch)
    tc = TrainConfig(lr=3e-3, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8,
                     schedule="cosine", warmup_steps=3, total_steps=20, max_grad_norm=0.5)
    batches = [batch(cfg, 100 + i % 4) for i in range(20)]  # repeats, so the loss falls
    trainer = Trainer(g, w, tc)
    ours = [trainer.step(b)["loss"] for b in batches]
    theirs = torch_curve(TorchModel(arch, w, tmp_path), tc, batches)
    assert ours[-1] < 0.9 * ours[0]
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert abs(a - b) <= 1e-3 * abs(b), f"step {i + 1}: paddle {a}, torch {b}"


def test_accumulation_gives_the_single_batch_update():
    cfg, g, w = setup("llama")
    b = batch(cfg, 5, shape=(4, 6))
    runs = []
    for acc in (1, 2, 4):
        # eps 1: the first Adam update is ~lr * g, not sign(g), so weights compare gradients
        t = Trainer(g, w, TrainConfig(lr=1.0, eps=1.0, accumulation_steps=acc, max_grad_norm=0.1))
        m = t.step(b)
        runs.append((m["loss"], m["grad_norm"], t.program.state_dict()))
    for loss, norm, state in runs[1:]:
        assert abs(loss - runs[0][0]) < 1e-5 and abs(norm - runs[0][1]) < 1e-4 * norm
        for k, v in state.items():
            np.testing.assert_allclose(v, runs[0][2][k], atol=1e-7, err_msg=k)


def test_runs_are_reproducible():
    cfg, g, w = setup("llama")
    curves = []
    for _ in range(2):
        t = Trainer(g, w, TrainConfig(lr=1e-2, seed=7))
        curves.append([t.step(batch(cfg, i))["loss"] for i in range(3)])
    assert curves[0] == curves[1]


def test_metrics_of_a_step():
    cfg, g, w = setup("llama")
    t = Trainer(g, w, TrainConfig(lr=2e-3, warmup_steps=2, total_steps=4))
    first, second = t.step(batch(cfg, 0)), t.step(batch(cfg, 1))
    assert first["lr"] == 0.0 and second["lr"] == pytest.approx(1e-3)
    assert second["step"] == 2 and second["tokens"] == 16 and second["grad_norm"] > 0
    assert t.describe()["device"] == "cpu" and t.describe()["config"]["warmup_steps"] == 2


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_schedules_match_transformers(schedule):
    import transformers

    make = getattr(transformers, f"get_{schedule}_schedule_with_warmup")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    kw = {} if schedule == "constant" else {"num_training_steps": 30}
    sched = make(opt, num_warmup_steps=5, **kw)
    for step in range(31):  # past the end transformers' cosine rises again; ours stays
        want = opt.param_groups[0]["lr"]
        got = lr_factor(step, schedule=schedule, warmup_steps=5, total_steps=30)
        assert math.isclose(got, want, abs_tol=1e-12), step
        opt.step()
        sched.step()


def test_min_lr_ratio_is_the_floor():
    ends = [lr_factor(50, schedule=s, warmup_steps=0, total_steps=50, min_lr_ratio=0.1)
            for s in ("cosine", "linear")]
    assert ends == pytest.approx([0.1, 0.1])


def test_non_finite_loss_stops_without_touching_the_weights():
    cfg, g, w = setup("llama")
    w = dict(w, **{"model.norm.weight": np.full_like(w["model.norm.weight"], np.nan)})
    t = Trainer(g, w, TrainConfig())
    before = t.program.state_dict()
    with pytest.raises(TrainingError, match="loss is nan at step 1; stopping"):
        t.step(batch(cfg, 0))
    after = t.program.state_dict()
    assert all(np.array_equal(before[k], after[k], equal_nan=True) for k in before)


@pytest.mark.parametrize("change,message", [
    ({"schedule": "step"}, "schedule must be one of cosine, linear, constant"),
    ({"dtype": "float16"}, "dtype must be one of float32, bfloat16"),
    ({"dtype": "bfloat16"}, "dtype bfloat16 on cpu: Paddle .*'s auto_cast\\(dtype='bfloat16'\\) "
                            "leaves matmuls in float32 here \\(amp_guard can only be enabled on "
                            "CUDAPlace.*no bfloat16 matmul kernel"),
    ({"accumulation_steps": 0}, "accumulation_steps and total_steps must be >= 1"),
])
def test_bad_config_is_refused(change, message):
    cfg, g, w = setup("llama")
    with pytest.raises(TrainingError, match=message):
        Trainer(g, w, TrainConfig(**change))


def test_all_masked_batch_and_last_token_graph_are_refused():
    cfg, g, w = setup("llama")
    b = batch(cfg, 0)
    with pytest.raises(TrainingError, match="no unmasked label"):
        Trainer(g, w, TrainConfig()).step(dict(b, labels=np.full_like(b["labels"], -100)))
    _, last, _ = setup("llama", last_token_only=True)
    with pytest.raises(TrainingError, match="not one row per input position"):
        Trainer(last, w, TrainConfig())


def test_recompute_runs_each_layer_again_and_changes_no_gradient():
    cfg, g, w = setup("baichuan2_13b")
    b = batch(cfg, 3)
    grads, calls = [], []
    for recompute in (False, True):
        t = Trainer(g, w, TrainConfig(recompute=recompute))
        layer_ops = [i for i, (op, _) in enumerate(t.program.steps)
                     if any(v.name.startswith("model.layers.1.") for v in op.inputs)]
        count = [0]
        op, step = t.program.steps[layer_ops[0]]

        def counted(env, step=step, count=count):
            count[0] += 1
            return step(env)

        t.program.steps[layer_ops[0]] = (op, counted)
        loss, n = t.loss_sum(b["input_ids"], b["labels"])
        (loss / n).backward()
        grads.append({k: p.grad.numpy() for k, p in t.program.params.items()})
        calls.append(count[0])
    assert calls == [1, 2]
    for k in grads[0]:
        np.testing.assert_allclose(grads[1][k], grads[0][k], rtol=1e-6, atol=1e-9, err_msg=k)


def test_resume_from_state_reproduces_the_uninterrupted_curve():
    cfg, g, w = setup("llama_gqa")
    tc = TrainConfig(lr=3e-3, weight_decay=0.1, warmup_steps=2, total_steps=6)
    batches = [batch(cfg, i) for i in range(6)]
    straight = Trainer(g, w, tc)
    want = [straight.step(b)["loss"] for b in batches]
    first = Trainer(g, w, tc)
    got = [first.step(b)["loss"] for b in batches[:3]]
    state = first.state_dict()
    assert state["step"] == 3 and any("moment1" in k for k in state["optimizer"])
    resumed = Trainer(g, fixtures.random_weights("llama_gqa", seed=9), tc)
    resumed.load_state_dict(state)
    got += [resumed.step(b)["loss"] for b in batches[3:]]
    assert got == want
    with pytest.raises(TrainingError, match="already stepped"):
        resumed.load_state_dict(state)


def test_state_of_another_model_is_refused():
    _, g, w = setup("llama_gqa")
    _, g2, w2 = setup("baichuan2_7b")
    with pytest.raises(TrainingError, match="the state is of another model"):
        Trainer(g, w, TrainConfig()).load_state_dict(Trainer(g2, w2, TrainConfig()).state_dict())


@pytest.mark.parametrize("target", ["cpu", "mlu370"])
@pytest.mark.parametrize("arch", ["llama_gqa", "baichuan2_13b"])
def test_compiled_target_graph_trains_like_the_full_form(arch, target):
    """Fused kernels' backward (SDPA, swiglu, rope, merged qkv / gate_up weights) gives the
    full form's loss and gradients (themselves checked against torch above)."""
    from llmc import api
    from llmc.compile import model_facts
    from llmc.compiler.passmanager import PassContext
    from llmc.passes.pipelines import pipeline_for

    cfg, full, w = setup(arch)
    _, fused, _ = setup(arch)
    api.run_pipeline(fused, pipeline_for(target), ctx=PassContext(model=model_facts(cfg, "full")))
    assert "attention" in fused.op_counts()
    b = batch(cfg, 11)
    grads, losses = [], []
    for g in (full, fused):
        t = Trainer(g, w, TrainConfig())
        loss, n = t.loss_sum(b["input_ids"], b["labels"])
        (loss / n).backward()
        losses.append(float(loss / n))
        grads.append({k: p.grad.numpy() for k, p in t.program.params.items()})
    assert abs(losses[1] - losses[0]) <= TOL * losses[0]
    for k in grads[0]:
        assert rel(grads[1][k], grads[0][k]) < TOL, k
