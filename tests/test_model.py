import copy
import inspect

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.poutine.util import site_is_subsample

from pyro_vae import BernoulliLikelihood, TrainConfig, build_vae, train
from pyro_vae.data import prepare
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.models import build_vae_from_config
from pyro_vae.training import heldout_loss

from conftest import make_tiny_data, tiny_config


def traces(vae, x):
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    return model_tr, guide_tr


@pytest.mark.parametrize(
    "net,shape", [("mlp", (1, 28, 28)), ("conv", (1, 28, 28)), ("mlp", (3, 5, 7)), ("conv", (2, 9, 13))]
)
def test_sites_shapes_and_event_dims(net, shape):
    n, z_dim = 5, 6
    vae = build_vae(shape, net, z_dim=z_dim, hidden=(32, 16))
    x = torch.bernoulli(torch.full((n, *shape), 0.5))
    model_tr, guide_tr = traces(vae, x)

    def sample_sites(tr):
        return {k for k, s in tr.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)}

    model_sites, guide_sites = sample_sites(model_tr), sample_sites(guide_tr)
    assert model_sites == {"z", "x"}
    assert guide_sites == {"z"}

    z_prior, z_post, x_site = model_tr.nodes["z"], guide_tr.nodes["z"], model_tr.nodes["x"]
    for site in (z_prior, z_post, x_site):
        assert [f.name for f in site["cond_indep_stack"]] == ["data"]
        assert site["fn"].batch_shape == (n,)
    assert z_prior["fn"].event_shape == (z_dim,) and z_post["fn"].event_shape == (z_dim,)
    assert z_post["value"].shape == (n, z_dim)
    assert x_site["is_observed"] and x_site["fn"].event_shape == shape
    assert isinstance(x_site["fn"].base_dist, dist.Bernoulli)
    assert z_post["fn"].has_rsample
    assert vae.sample(3).shape == (3, *shape)
    assert vae.reconstruct(x).shape == x.shape


def test_model_and_guide_share_signature():
    vae = build_vae((1, 4, 4), z_dim=2, hidden=(8,))
    assert inspect.signature(vae.model) == inspect.signature(vae.guide)


def test_prior_parameters_are_buffers_that_follow_to():
    vae = build_vae((1, 4, 4), z_dim=3, hidden=(8,))
    assert {"prior.loc", "prior.scale"} <= {name for name, _ in vae.named_buffers()}
    assert "prior.loc" in vae.state_dict()
    vae.to(torch.float64)
    p = vae.prior()
    assert p.base_dist.loc.dtype == torch.float64 and p.base_dist.scale.dtype == torch.float64
    torch.testing.assert_close(p.base_dist.scale, torch.ones(3, dtype=torch.float64))


@pytest.mark.cuda
def test_prior_follows_to_cuda():
    vae = build_vae((1, 4, 4), z_dim=3, hidden=(8,)).to("cuda")
    assert vae.prior().base_dist.loc.is_cuda
    x = torch.bernoulli(torch.full((2, 1, 4, 4), 0.5, device="cuda"))
    model_tr, _ = traces(vae, x)
    assert model_tr.nodes["x"]["fn"].base_dist.logits.is_cuda


def test_bernoulli_takes_logits_and_stays_finite_when_saturated():
    lik = BernoulliLikelihood()
    logits = torch.tensor([[200.0, -200.0, 0.0]])
    d = lik(logits, event_dim=1)
    assert d.base_dist.logits is logits
    # x=0 where the logit is +200: the exact log-likelihood is -200; sigmoid-then-log gives -inf
    lp = d.log_prob(torch.tensor([[0.0, 1.0, 1.0]]))
    torch.testing.assert_close(lp, torch.tensor([-400.0 - torch.log(torch.tensor(2.0)).item()]))


def test_bernoulli_rejects_grayscale_with_a_clear_message():
    expected = r"Bernoulli likelihood needs binary test images \(0 or 1\), found 0.5; binarize"
    with pytest.raises(DataError, match=expected):
        BernoulliLikelihood().check_data(torch.tensor([0.0, 0.5, 1.0]), "test images")


def test_conv_refuses_non_image_shapes():
    with pytest.raises(ConfigError, match=r"`net=conv` needs images shaped \(channels, height, width\), got \(784,\)"):
        build_vae((784,), "conv")


def test_no_pixel_count_is_hard_coded():
    vae = build_vae((1, 10, 12), "mlp", z_dim=4, hidden=(16,))
    assert vae.encoder.body[1].in_features == 120
    assert vae.decoder.body[-1].out_features == 120
    pyro.clear_param_store()


@pytest.mark.parametrize(
    "prior,likelihood,elbo",
    [
        ("learned-normal", "normal-pixel", Trace_ELBO),
        ("mog", "normal-image", Trace_ELBO),
        ("vamp", "discretized-logistic", Trace_ELBO),
        ("learned-normal", "bernoulli", TraceMeanField_ELBO),
    ],
)
def test_plain_pyro_svi_trains_every_parameter(prior, likelihood, elbo):
    data = make_tiny_data()
    vae = build_vae((1, 8, 8), z_dim=3, hidden=(32,), prior=prior, likelihood=likelihood)
    kind = vae.data_kind
    x = prepare(data.train, kind, torch.Generator().manual_seed(0))
    before = {k: v.detach().clone() for k, v in vae.named_parameters()}
    held = prepare(data.train[:40], kind, torch.Generator().manual_seed(1))
    loss0 = heldout_loss(vae, Trace_ELBO(), held)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), elbo())
    for step in range(60):
        svi.step(x[(step * 16) % 96 : (step * 16) % 96 + 16])
    # every parameter of the VAE is in Pyro's param store, as the very tensor the module holds
    store = pyro.get_param_store()
    registered = {id(store[name]) for name in store.keys()}
    assert {id(p) for p in vae.parameters()} <= registered
    moved = [k for k, v in vae.named_parameters() if not torch.equal(before[k], v)]
    assert sorted(moved) == sorted(before), f"not trained: {sorted(set(before) - set(moved))}"
    assert heldout_loss(vae, Trace_ELBO(), held) < loss0 - 1.0


def test_a_second_vae_in_the_same_param_store_trains_too():
    # the param store still holds the first VAE's tensors under the same names (no clear in between)
    data = make_tiny_data()
    x = prepare(data.train, "binary", torch.Generator().manual_seed(0))
    for _ in range(2):
        vae = build_vae((1, 8, 8), z_dim=3, hidden=(16,), prior="learned-normal")
        before = {k: v.detach().clone() for k, v in vae.named_parameters()}
        svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
        for _ in range(5):
            svi.step(x[:32])
        assert all(not torch.equal(before[k], v) for k, v in vae.named_parameters())


def test_library_loop_leaves_the_param_store_alone_and_svi_registration_back_on(tmp_path):
    result = train(tiny_config(tmp_path, epochs=1), data=make_tiny_data())
    assert result.vae.register_params is True
    assert len(list(pyro.get_param_store().keys())) == 0


def _with_pyros_plate(vae):
    # the same VAE sampling in Pyro's own plate, subsample site and all
    vae.data_plate = lambda x: pyro.plate("data", x.shape[0], device=x.device)
    return vae


@pytest.mark.parametrize("family", ["vae", "ladder"])
def test_data_plate_gives_every_site_pyros_frame_shapes_and_densities_without_the_subsample_site(family):
    shape = (1, 4, 4)
    if family == "ladder":
        vae = build_vae_from_config(shape, TrainConfig(model="ladder", latents=(3, 2), hidden=(8, 8)))
    else:
        vae = build_vae(shape, z_dim=3, hidden=(8,))
    x = torch.bernoulli(torch.full((5, *shape), 0.5))
    pyro.set_rng_seed(0)
    model_tr, guide_tr = traces(vae, x)
    pyro.set_rng_seed(0)
    ref_model, ref_guide = traces(_with_pyros_plate(copy.deepcopy(vae)), x)
    assert "data" in ref_guide.nodes and site_is_subsample(ref_guide.nodes["data"])  # what DataPlate leaves out
    for ours, ref in ((model_tr, ref_model), (guide_tr, ref_guide)):
        assert "data" not in ours.nodes
        assert list(ours.nodes) == [n for n in ref.nodes if n != "data"]
        ours.compute_log_prob()
        ref.compute_log_prob()
        for name, site in ours.nodes.items():
            if site["type"] != "sample":
                continue
            assert (
                site["cond_indep_stack"] == ref.nodes[name]["cond_indep_stack"]
            )  # name, dim, size, counter, full size
            assert site["fn"].batch_shape == ref.nodes[name]["fn"].batch_shape == (5,)
            assert site["scale"] == ref.nodes[name]["scale"] == 1.0
            torch.testing.assert_close(site["value"], ref.nodes[name]["value"], rtol=0, atol=0)
            torch.testing.assert_close(site["log_prob"], ref.nodes[name]["log_prob"])


def test_data_plate_takes_its_dimension_afresh_each_time_inside_and_outside_a_particle_plate():
    vae = build_vae((1, 4, 4), z_dim=3, hidden=(8,))
    x = torch.bernoulli(torch.full((5, 1, 4, 4), 0.5))
    for k in (None, 7, None):  # alone, under a vectorised particle plate at dim -2, alone again
        if k is None:
            tr = poutine.trace(vae.guide).get_trace(x)
            assert tr.nodes["z"]["value"].shape == (5, 3)
        else:
            with pyro.plate("particles", k, dim=-2):
                tr = poutine.trace(vae.guide).get_trace(x)
            assert tr.nodes["z"]["value"].shape == (k, 5, 3)
        assert [f.dim for f in tr.nodes["z"]["cond_indep_stack"] if f.name == "data"] == [-1]


@pytest.mark.parametrize("elbo", [Trace_ELBO, TraceMeanField_ELBO])
def test_pyros_own_elbos_with_validation_give_the_same_loss_in_either_plate(elbo):
    vae = build_vae((1, 4, 4), z_dim=3, hidden=(8,))
    x = torch.bernoulli(torch.full((6, 1, 4, 4), 0.5))
    with pyro.validation_enabled(True):
        pyro.set_rng_seed(3)
        ours = elbo(num_particles=4).differentiable_loss(vae.model, vae.guide, x)
        pyro.set_rng_seed(3)
        ref_vae = _with_pyros_plate(copy.deepcopy(vae))
        ref = elbo(num_particles=4).differentiable_loss(ref_vae.model, ref_vae.guide, x)
    torch.testing.assert_close(ours, ref)
