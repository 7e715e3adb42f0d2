"""Tests of the segmentation and classification networks and of pretrained-weight loading."""
import copy
import json

import pytest
import torch

from ortho_nnd.diffusion import ExponentialMovingAverage
from ortho_nnd.network import (
    DiffusionUNet,
    IncompatibleCheckpointError,
    MultiViewClassifier,
    SegmentationNetwork,
    ViewEncoder,
    build_network_from_spec,
    load_pretrained_backbone,
)


@pytest.fixture(autouse=True)
def _single_thread():
    """Run on one thread: on a shared 2-core machine, two threads are many times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


BACKBONE_KWARGS = {
    "in_channels": 1,
    "out_channels": 1,
    "features_per_stage": [4, 8, 16],
    "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
    "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
    "n_blocks_per_stage": [1, 1, 1],
    "n_blocks_per_stage_decoder": [1, 1],
    "attention_stages": [False, False, True],
    "attention_heads": 2,
    "time_embed_dim": 16,
    "norm": "instance",
    "dropout": 0.0,
}
PATCH = (4, 16, 16)


def _backbone(**overrides):
    return DiffusionUNet(**{**BACKBONE_KWARGS, **overrides})


def _pretraining_checkpoint(network: DiffusionUNet, path=None) -> dict:
    """Build a checkpoint in the documented layout whose EMA and network weights differ.

    With ``path``, the checkpoint goes through torch.save and torch.load(weights_only=True).
    """
    ema = ExponentialMovingAverage(network, decay=0.9)
    with torch.no_grad():
        for param in network.parameters():
            param.add_(0.01)
    checkpoint = {
        "network_weights": network.state_dict(),
        "ema_weights": ema.state_dict(),
        "architecture": network.to_spec(),
        "iteration": 10,
    }
    if path is None:
        return checkpoint
    torch.save(checkpoint, path)
    return torch.load(path, weights_only=True)


def _classifier(fusion):
    torch.manual_seed(0)
    encoders = {
        "sagittal": ViewEncoder(_backbone(), ["bottleneck", "dec1"], [50, 150]),
        "coronal": ViewEncoder(_backbone(), ["dec0"], [50]),
    }
    return MultiViewClassifier(encoders, num_findings=3, fusion=fusion, embed_dim=8).eval()


# ---------------------------------------------------------------------- segmentation


def test_segmentation_deep_supervision_shapes():
    network = SegmentationNetwork(_backbone(), num_classes=5, timestep=50)
    x = torch.randn(2, 1, *PATCH)

    outputs = network(x)

    assert [tuple(output.shape) for output in outputs] == [(2, 5, 4, 16, 16), (2, 5, 4, 8, 8)]
    assert network.output_strides() == [(1, 1, 1), (1, 2, 2)]
    network.deep_supervision = False
    assert network(x).shape == (2, 5, 4, 16, 16)


def test_segmentation_drops_diffusion_head():
    network = SegmentationNetwork(_backbone(), num_classes=3, timestep=50)
    assert not any(key.startswith("backbone.output_head.") for key in network.state_dict())


def test_segmentation_learned_timestep_gets_gradient():
    network = SegmentationNetwork(_backbone(), num_classes=3, timestep=50, learn_timestep=True)
    # The learned timestep reaches the loss through the time embedding of every residual block.
    loss = sum(output.square().mean() for output in network(torch.randn(1, 1, *PATCH)))
    loss.backward()

    assert network.timestep.grad is not None
    assert float(network.timestep.grad.abs()) > 0


@pytest.mark.parametrize("learn_timestep", [False, True])
def test_segmentation_spec_rebuild_identical_outputs(learn_timestep):
    torch.manual_seed(0)
    network = SegmentationNetwork(_backbone(), num_classes=3, timestep=50, learn_timestep=learn_timestep).eval()
    spec = json.loads(json.dumps(network.to_spec()))

    rebuilt = build_network_from_spec(spec).eval()
    rebuilt.load_state_dict(network.state_dict())
    x = torch.randn(1, 1, *PATCH)

    for expected, actual in zip(network(x), rebuilt(x)):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_segmentation_invalid_arguments_raise():
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationNetwork(_backbone(), num_classes=1, timestep=50)
    with pytest.raises(ValueError, match="timestep"):
        SegmentationNetwork(_backbone(), num_classes=2, timestep=-1)


# ---------------------------------------------------------------------- classification


def test_view_encoder_embedding_dim():
    encoder = ViewEncoder(_backbone(), ["bottleneck", "dec1"], [50, 150])
    embedding = encoder(torch.randn(2, 1, *PATCH))

    # 2 poolings x 2 timesteps x (16 + 8) channels.
    assert encoder.embedding_dim == 96
    assert embedding.shape == (2, 96)


def test_view_encoder_invalid_feature_raises():
    with pytest.raises(ValueError, match="Unknown feature"):
        ViewEncoder(_backbone(), ["dec7"], [50])
    with pytest.raises(ValueError, match="timesteps"):
        ViewEncoder(_backbone(), ["dec0"], [])


def test_classifier_concat_missing_view():
    classifier = _classifier("concat")
    sagittal = torch.randn(2, 1, *PATCH)

    logits, weights = classifier({"sagittal": sagittal, "coronal": None})

    assert logits.shape == (2, 3)
    assert weights is None
    assert torch.isfinite(logits).all()


def test_classifier_partial_presence_matches_single():
    classifier = _classifier("concat")
    sagittal = torch.randn(2, 1, *PATCH)
    coronal = torch.randn(2, 1, *PATCH)
    present = {"coronal": torch.tensor([True, False])}

    logits, _ = classifier({"sagittal": sagittal, "coronal": coronal}, present)
    # Sample 1 lacks the coronal view, so its logits must equal those with coronal None.
    logits_without, _ = classifier({"sagittal": sagittal[1:], "coronal": None})
    logits_with, _ = classifier({"sagittal": sagittal[:1], "coronal": coronal[:1]})

    torch.testing.assert_close(logits[1:], logits_without)
    torch.testing.assert_close(logits[:1], logits_with)


def test_classifier_gated_weights_over_present_views():
    classifier = _classifier("gated")
    sagittal = torch.randn(3, 1, *PATCH)
    coronal = torch.randn(3, 1, *PATCH)
    present = {"sagittal": torch.tensor([True, True, False]), "coronal": torch.tensor([True, False, True])}

    logits, weights = classifier({"sagittal": sagittal, "coronal": coronal}, present)

    assert logits.shape == (3, 3)
    assert weights.shape == (3, 3, 2)
    torch.testing.assert_close(weights.sum(dim=2), torch.ones(3, 3))
    # Views order: sagittal, coronal. Missing views get weight 0.
    assert torch.all(weights[1, :, 1] == 0)
    assert torch.all(weights[2, :, 0] == 0)
    assert torch.all(weights[0] > 0)


def test_classifier_invalid_inputs_raise():
    classifier = _classifier("gated")
    x = torch.randn(2, 1, *PATCH)
    with pytest.raises(ValueError, match="no present view"):
        classifier({"sagittal": x, "coronal": None}, {"sagittal": torch.tensor([True, False])})
    with pytest.raises(ValueError, match="Unknown views"):
        classifier({"axial": x})
    with pytest.raises(ValueError, match="is None"):
        classifier({"sagittal": x, "coronal": None}, {"coronal": torch.tensor([True, False])})
    with pytest.raises(ValueError, match="batch size"):
        classifier({"sagittal": x, "coronal": x[:1]})
    with pytest.raises(ValueError, match="fusion"):
        MultiViewClassifier({"sagittal": ViewEncoder(_backbone(), ["dec0"], [50])}, 3, fusion="mean")


@pytest.mark.parametrize("fusion", ["concat", "gated"])
def test_classifier_spec_rebuild_identical_outputs(fusion):
    classifier = _classifier(fusion)
    spec = json.loads(json.dumps(classifier.to_spec()))

    rebuilt = build_network_from_spec(spec).eval()
    rebuilt.load_state_dict(classifier.state_dict())
    images = {"sagittal": torch.randn(2, 1, *PATCH), "coronal": torch.randn(2, 1, *PATCH)}

    expected, _ = classifier(images)
    actual, _ = rebuilt(images)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


# ---------------------------------------------------------------------- loading


def test_load_compatible_checkpoint_report(tmp_path):
    torch.manual_seed(0)
    checkpoint = _pretraining_checkpoint(_backbone(), tmp_path / "checkpoint_final.pth")
    network = SegmentationNetwork(_backbone(), num_classes=3, timestep=50)

    report = load_pretrained_backbone(network, checkpoint, "Dataset101_Knee/pretrain_sagittal")

    assert "backbone.encoder.0.input_conv.weight" in report.loaded
    assert report.adapted == []
    assert sorted(report.fresh) == ["heads.0.bias", "heads.0.weight", "heads.1.bias", "heads.1.weight"]
    assert report.ignored == [
        "output_head.conv.bias",
        "output_head.conv.weight",
        "output_head.norm.bias",
        "output_head.norm.weight",
    ]
    assert "4 fresh" in report.summary()
    assert json.loads(report.to_json())["source_name"] == "Dataset101_Knee/pretrain_sagittal"


@pytest.mark.parametrize("prefer_ema, key", [(True, "ema_weights"), (False, "network_weights")])
def test_load_prefers_ema_weights(prefer_ema, key):
    torch.manual_seed(0)
    checkpoint = _pretraining_checkpoint(_backbone())
    network = _backbone()

    load_pretrained_backbone(network, checkpoint, "source", prefer_ema=prefer_ema)

    source = checkpoint[key]["weights"] if key == "ema_weights" else checkpoint[key]
    torch.testing.assert_close(network.decoder[1].blocks[0].conv1.weight, source["decoder.1.blocks.0.conv1.weight"])


def test_load_adapts_first_conv_channels():
    torch.manual_seed(0)
    checkpoint = _pretraining_checkpoint(_backbone())
    network = _backbone(in_channels=2, out_channels=2)

    report = load_pretrained_backbone(network, checkpoint, "source")

    source_weight = checkpoint["ema_weights"]["weights"]["encoder.0.input_conv.weight"]
    assert [entry["name"] for entry in report.adapted] == ["encoder.0.input_conv.weight"]
    torch.testing.assert_close(network.encoder[0].input_conv.weight[:, 0:1], source_weight / 2)
    torch.testing.assert_close(network.encoder[0].input_conv.weight[:, 1:2], source_weight / 2)
    # The diffusion head has a different out_channels, so it stays fresh.
    assert "output_head.conv.weight" in report.fresh
    assert "output_head.conv.weight" in report.ignored


def test_load_incompatible_architecture_raises():
    checkpoint = _pretraining_checkpoint(_backbone(features_per_stage=[4, 8, 32]))
    network = SegmentationNetwork(_backbone(), num_classes=3, timestep=50)
    before = copy.deepcopy(network.state_dict())

    with pytest.raises(IncompatibleCheckpointError, match=r"(?s)features_per_stage: checkpoint \[4, 8, 32\].*--pretrained_from"):
        load_pretrained_backbone(network, checkpoint, "source")
    # Nothing was loaded.
    for name, tensor in network.state_dict().items():
        torch.testing.assert_close(tensor, before[name])


def test_load_incompatible_state_dict_raises():
    # Without an architecture entry, the tensors are compared name by name and shape by shape.
    network = _backbone()

    weights = _backbone(kernel_sizes=[[3, 3, 3], [3, 3, 3], [3, 3, 3]]).state_dict()
    with pytest.raises(IncompatibleCheckpointError, match=r"encoder.0.input_conv.weight: checkpoint shape \[4, 1, 3, 3, 3\]"):
        load_pretrained_backbone(network, weights, "plain state dict")

    deeper = _backbone(n_blocks_per_stage=[1, 2, 1]).state_dict()
    with pytest.raises(IncompatibleCheckpointError, match="encoder.1.blocks.1.conv1.weight: unexpected"):
        load_pretrained_backbone(network, deeper, "plain state dict")

    shallower = _backbone(n_blocks_per_stage=[1, 1, 1]).state_dict()
    with pytest.raises(IncompatibleCheckpointError, match="encoder.1.blocks.1.conv1.weight: missing"):
        load_pretrained_backbone(_backbone(n_blocks_per_stage=[1, 2, 1]), shallower, "plain state dict")


def test_load_segmentation_checkpoint_into_view_encoder():
    torch.manual_seed(0)
    segmentation = SegmentationNetwork(_backbone(), num_classes=3, timestep=50)
    checkpoint = {"network_weights": segmentation.state_dict(), "architecture": segmentation.to_spec()}
    encoder = ViewEncoder(_backbone(), ["bottleneck"], [50])

    report = load_pretrained_backbone(encoder, checkpoint, "seg_sagittal/fold_0")

    assert all(name.startswith("backbone.") for name in report.loaded)
    assert "heads.0.weight" in report.ignored
    assert all(name.startswith("pools.") for name in report.fresh)


# ---------------------------------------------------------------------- DDP readiness


def _parameters_without_gradient(network):
    return [name for name, param in network.named_parameters() if param.grad is None]


def test_segmentation_every_parameter_gets_gradient():
    # DDP without find_unused_parameters requires every parameter in the graph.
    network = SegmentationNetwork(_backbone(), num_classes=3, timestep=50, learn_timestep=True)

    sum(output.mean() for output in network(torch.randn(1, 1, *PATCH))).backward()

    assert _parameters_without_gradient(network) == []


@pytest.mark.parametrize("fusion", ["concat", "gated"])
def test_classifier_every_parameter_gets_gradient(fusion):
    classifier = _classifier(fusion).train()
    images = {"sagittal": torch.randn(2, 1, *PATCH), "coronal": torch.randn(2, 1, *PATCH)}

    logits, _ = classifier(images)
    logits.sum().backward()

    assert _parameters_without_gradient(classifier) == []
