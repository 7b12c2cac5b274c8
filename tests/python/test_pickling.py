"""torch.save(model), copy.deepcopy and swa_utils.AveragedModel of models with
dynamoe layers, in one process (the expert-parallel case: dist_checkpoint.py's
`portable` scenario), after a training step has left a graph behind."""
import copy
import io

import torch
from torch import nn

import dynamoe


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 6), dynamoe.MoE(6, 10, 4, top_k=2, capacity_factor=1.0, bias_update_rate=0.01,
                                                      placement="none", name="pickled")).double()


def _trained(model, x):
    y = model(x)
    (y.sum() + model[1].aux_loss).backward()  # aux_loss and stats now hold a graph's tensors
    return model


def test_torch_save_and_load_round_trip_keeps_weights_step_and_outputs():
    x = torch.randn(9, 6, dtype=torch.float64)
    model = _trained(_model(), x)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    kwargs = {"weights_only": False} if "weights_only" in torch.load.__code__.co_varnames else {}
    loaded = torch.load(buf, **kwargs)
    assert loaded[1].step == model[1].step == 1  # the step counter (and with it RTS and the bias) survives
    torch.testing.assert_close(loaded[1].expert_bias, model[1].expert_bias, rtol=0, atol=0)
    model.eval(), loaded.eval()
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_deepcopy_is_independent_and_equal():
    x = torch.randn(9, 6, dtype=torch.float64)
    model = _trained(_model(), x)
    twin = copy.deepcopy(model)
    assert twin[1].w1 is not model[1].w1 and twin[1]._state is not model[1]._state
    model.eval(), twin.eval()
    torch.testing.assert_close(twin(x), model(x), rtol=0, atol=0)
    with torch.no_grad():
        twin[1].w1.add_(1.0)
    assert not torch.equal(twin(x), model(x))  # weights are copies, not shared


def test_averaged_model_averages_and_runs():
    x = torch.randn(9, 6, dtype=torch.float64)
    model = _trained(_model(), x)
    swa = torch.optim.swa_utils.AveragedModel(model)
    first = model[1].w1.detach().clone()
    swa.update_parameters(model)  # the first snapshot
    with torch.no_grad():
        model[1].w1.add_(2.0)
    swa.update_parameters(model)
    torch.testing.assert_close(swa.module[1].w1, first + 1.0)  # the mean of the two snapshots
    swa.eval()
    assert swa(x).shape == x.shape


def test_copies_keep_the_expert_parameter_mark():
    model = _model()
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    kwargs = {"weights_only": False} if "weights_only" in torch.load.__code__.co_varnames else {}
    for m in (copy.deepcopy(model), torch.load(buf, **kwargs)):
        assert dynamoe.is_expert_parameter(m[1].w1) and not dynamoe.is_expert_parameter(m[1].gate.weight)


def test_portable_checkpoint_strictness_in_one_process():
    model = _model()
    sd = dynamoe.portable_state_dict(model)
    assert "1.experts.3.b1" not in sd and "1.experts.3.w1" in sd
    biased = nn.Sequential(nn.Linear(6, 6), dynamoe.MoE(6, 10, 4, bias=True, name="biased")).double()
    extra = dynamoe.portable_state_dict(biased)
    try:  # b1/b2 have nowhere to go in a bias-free layer: strict loading says so
        dynamoe.load_portable_state_dict(model, extra)
        assert False, "unexpected keys were dropped silently"
    except RuntimeError as e:
        assert "experts.0.b1" in str(e)
    result = dynamoe.load_portable_state_dict(biased, sd, strict=False)  # b1/b2 missing: reported, not raised
    assert "1.b1" in result.missing_keys


def test_a_pickle_from_before_the_runtime_object_loads():
    """Layers pickled when their options were plain attributes (schedule, group_size and
    overlap_degree included) load, run and keep their options."""
    model = _model()
    x = torch.randn(9, 6, dtype=torch.float64)
    model.eval()
    want = model[1](x)
    old = model[1].__getstate__()
    options = old.pop("_options")
    old.update(options)  # the old layout: one attribute per option
    old.update(schedule="sequential", group_size=-1, overlap_degree=2)
    for key in ("_schedule", "_custom", "_layer"):
        old.pop(key)
    layer = dynamoe.MoE.__new__(dynamoe.MoE)
    layer.__setstate__(old)
    assert layer.capacity_factor == 1.0 and layer.name == "pickled" and layer.bias_update_rate == 0.01
    assert layer._schedule == ("sequential", None, 2)
    torch.testing.assert_close(layer(x), want, rtol=0, atol=0)
