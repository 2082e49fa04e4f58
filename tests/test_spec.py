"""The activation spec: strings, mappings, factories, errors, round trips, the registry, swapping."""

import functools

import pytest
import torch
import yaml
from torch import nn

import lit_ortho as L


@pytest.mark.parametrize("spec,cls,attrs", [
    ("gelu", nn.GELU, {"approximate": "none"}),
    ("gelu_tanh", nn.GELU, {"approximate": "tanh"}),
    ("leaky_relu(negative_slope=0.2)", nn.LeakyReLU, {"negative_slope": 0.2}),
    ("hermite:3", L.HermiteActivation, {"degree": 3, "init": "paper"}),
    ("Hermite : 5", L.HermiteActivation, {"degree": 5}),
    ("hermite(degree=3, init=gelu)", L.HermiteActivation, {"degree": 3, "init": "gelu"}),
    ("hermite(4)", L.HermiteActivation, {"degree": 4}),
    ("fourier(degree=5, per_channel=3072)", L.FourierActivation, {"degree": 5, "per_channel": 3072}),
    ("tropical(degree=3, init=unit, channel_dim=1, per_channel=2)", L.TropicalActivation, {"channel_dim": 1}),
    ({"name": "hermite", "degree": 3, "init": "unit"}, L.HermiteActivation, {"init": "unit"}),
    ({"name": "silu"}, nn.SiLU, {}),
    (nn.Tanh, nn.Tanh, {}),
    (functools.partial(L.HermiteActivation, degree=2), L.HermiteActivation, {"degree": 2}),
])
def test_specs_build_the_right_module(spec, cls, attrs):
    module = L.build_activation(spec)
    assert type(module) is cls
    for key, value in attrs.items():
        assert getattr(module, key) == value


def test_yaml_values_are_specs():
    doc = yaml.safe_load("a: hermite:3\nb: {name: fourier, degree: 4, init: unit}\nc: 'tropical(degree=2)'\n")
    assert [type(L.build_activation(v)) for v in doc.values()] == [
        L.HermiteActivation, L.FourierActivation, L.TropicalActivation]


def test_each_build_is_a_new_module():
    a, b = L.build_activation("hermite:3"), L.build_activation("hermite:3")
    assert a is not b and a.coefficients.data_ptr() != b.coefficients.data_ptr()
    instance = L.HermiteActivation(2)
    assert L.build_activation(instance) is not instance


@pytest.mark.parametrize("spec,message", [
    ("hermit:3", r"unknown activation 'hermit'.*valid choices:.*hermite.*Did you mean 'hermite'"),
    ("hermite:0", r"degree must be an integer from 1 to 32, got 0"),
    ("hermite:33", r"got 33"),
    ("hermite:abc", r"after ':' comes an integer degree, got 'abc'"),
    ("hermite(degree=3.5)", r"got 3.5"),
    ("hermite(degre=3)", r"unknown keyword 'degre'.*valid keywords:.*degree.*Did you mean 'degree'"),
    ("hermite(degree=3, per_chanel=4)", r"unknown keyword 'per_chanel'.*Did you mean 'per_channel'"),
    ("hermite(degree=3", r"malformed activation spec"),
    ("hermite(3, 4)", r"'4' is not 'key=value'"),
    ("hermite", r"cannot build activation 'hermite'.*degree"),
    ("hermite(degree=3, backend=cuda)", r"unknown hermite backend 'cuda'; valid choices: auto, eager"),
    ("hermite(degree=3, per_channel=0)", r"per_channel must be None or a positive int, got 0"),
    ("hermite(degree=3, init=gelux)", r"unknown activation 'gelux'.*Did you mean 'gelu'"),
    ("gelu(degree=3)", r"gelu: unknown keyword 'degree'; valid keywords: approximate"),
    ({"degree": 3}, r"needs a 'name' key"),
    ({"name": 3}, r"'name' must be a string"),
    (3, r"got int 3"),
    ("", r"empty activation spec"),
])
def test_bad_specs_name_the_bad_part_and_the_choices(spec, message):
    with pytest.raises(ValueError, match=message):
        L.build_activation(spec)


@pytest.mark.parametrize("spec", ["gelu", "gelu_tanh", "silu", "hermite(degree=3, init=unit)", "fourier:4",
                                  "tropical(degree=5, init=gelu)", "hermite(degree=2, per_channel=3, channel_dim=1)",
                                  "tropical_rational:3"])
def test_round_trip_spec_to_module_to_spec(spec):
    module = L.build_activation(spec)
    config = L.spec_of(module)
    again = L.build_activation(config)
    assert type(again) is type(module) and repr(again) == repr(module)
    if isinstance(module, L.LearnableActivation):
        assert L.build_activation(module.spec()).config() == config  # the string form too
        for (name, a), (_, b) in zip(module.state_dict().items(), again.state_dict().items()):
            assert torch.equal(a, b), name


def test_registry_accepts_a_user_family():
    @L.register_activation("scaled_tanh_test")
    class ScaledTanh(nn.Module):
        def __init__(self, scale: float = 1.0):
            super().__init__()
            self.scale = scale

        def forward(self, x):
            return self.scale * torch.tanh(x)

    assert "scaled_tanh_test" in L.list_activations()
    assert L.build_activation("scaled_tanh_test(scale=2.0)").scale == 2.0
    with pytest.raises(ValueError, match="already registered"):
        L.register_activation("scaled_tanh_test", ScaledTanh)
    with pytest.raises(ValueError, match="unknown keyword 'scal'"):
        L.build_activation("scaled_tanh_test(scal=2)")


def test_activation_factory_validates_early_and_builds_fresh_modules():
    factory = L.activation_factory("hermite:3")
    assert factory() is not factory()
    with pytest.raises(ValueError, match="unknown activation"):
        L.activation_factory("hermitte:3")


# ---- replace_activations ---------------------------------------------------------------------------------
class TinyMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.act1 = nn.Linear(8, 32), nn.GELU()
        self.fc2, self.act2 = nn.Linear(32, 32), nn.GELU()
        self.head, self.out_act = nn.Linear(32, 4), nn.Tanh()

    def forward(self, x):
        return self.out_act(self.head(self.act2(self.fc2(self.act1(self.fc1(x))))))


def test_replace_by_type_and_by_name():
    model = TinyMLP()
    assert L.replace_activations(model, "hermite:3") == ["act1", "act2"]
    assert isinstance(model.act1, L.HermiteActivation) and model.act1 is not model.act2
    assert isinstance(model.out_act, nn.Tanh)
    model = TinyMLP()
    assert L.replace_activations(model, "relu", types=None, names=["act2", "out_*"]) == ["act2", "out_act"]
    assert isinstance(model.act1, nn.GELU) and isinstance(model.out_act, nn.ReLU)


def test_replace_matching_nothing_is_an_error():
    with pytest.raises(ValueError, match=r"matched no module.*names=\['nope\.\*'\].*GELU"):
        L.replace_activations(TinyMLP(), "hermite:3", types=None, names=["nope.*"])


def test_replace_with_fit_keeps_outputs_and_records_the_target():
    torch.manual_seed(0)
    model = TinyMLP()
    x = torch.randn(256, 8)
    with torch.no_grad():
        before = model(x)
    L.replace_activations(model, "hermite:8", init="replaced")
    assert model.act1.init == "gelu"
    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, before, atol=5e-3, rtol=0)


def test_replace_in_timm_convnext_keeps_outputs_after_fitting_to_gelu():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    replaced = L.replace_activations(model, "fourier:5", init="gelu")
    assert len(replaced) == sum(len(stage.blocks) for stage in model.stages)
    assert all(isinstance(model.get_submodule(name), L.FourierActivation) for name in replaced)
    with torch.no_grad():
        after = model(x)
    assert float((after - before).abs().max()) < 0.05 * float(before.abs().max())
    assert torch.equal(after.argmax(1), before.argmax(1))


# ---- every bad value is caught when the activation is built, with the keyword named ------------------------
@pytest.mark.parametrize("build, message", [
    (lambda: L.build_activation("hermite(degree=3, per_channel=16, channel_dim=1.5)"), r"channel_dim must be an integer, got 1.5"),
    (lambda: L.build_activation("hermite(degree=3, per_channel=16, channel_dim=abc)"), r"channel_dim must be an integer, got 'abc'"),
    (lambda: L.build_activation("hermite:3:4"), r"malformed activation spec 'hermite:3:4': after ':' comes an integer degree"),
    (lambda: L.build_activation("hermite(degree=3:4)"), r"cannot read the value '3:4'"),
    (lambda: L.build_activation("hermite(degree=3, init=nonsense)"),
     r"unknown init 'nonsense'; valid choices: paper, unit, torchortho, or the spec of an activation to fit"),
    (lambda: L.activation_factory("hermite:0"), r"degree must be an integer from 1 to 32, got 0"),
    (lambda: L.build_activation("gelu(approximate=bogus)"), r"gelu: bad keyword value .*approximate.*none or tanh"),
    (lambda: L.build_activation("leaky_relu(negative_slope=abc)"), r"leaky_relu: negative_slope must be a number, got 'abc'"),
    (lambda: L.build_activation("hermite(degree=3, degree=4)"), r"the keyword 'degree' is given twice"),
    (lambda: L.build_activation("hermite(degree=3,,init=gelu)"), r"an empty argument between commas"),
    (lambda: L.build_activation(nn.Linear), r"Linear is not an activation factory.*give an activation spec"),
])
def test_bad_keyword_values_fail_at_build_time(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize("shape, channel_dim, message", [
    ((2, 3, 16), 5, r"channel_dim=5 is not a dimension of the 3-D input \(shape \(2, 3, 16\)\)"),
    ((), -1, r"per_channel=16 needs an input with a channel axis, got a 0-D tensor"),
    ((2, 3, 16), 1, r"input dim 1 has size 3"),
])
def test_channel_dim_checked_against_the_input(shape, channel_dim, message):
    act = L.build_activation({"name": "hermite", "degree": 3, "per_channel": 16, "channel_dim": channel_dim})
    with pytest.raises(ValueError, match=message):
        act(torch.zeros(shape))


def test_per_layer_mappings_name_what_is_wrong():
    from lit_ortho.models import layer_activation_specs

    with pytest.raises(ValueError, match=r"'3-1' is a reversed range: write '1-3'"):
        layer_activation_specs({"3-1": "gelu"}, 4)
    with pytest.raises(ValueError, match=r"has no 'name' key"):
        layer_activation_specs({"degree": 3}, 4)
    assert layer_activation_specs({"1-3": "gelu", "*": "relu"}, 4) == ["relu", "gelu", "gelu", "gelu"]
