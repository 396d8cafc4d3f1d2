"""Learned losses round-trip through safetensors + JSON, and bad files are refused clearly."""

import json

import pytest
import torch

from ml3_robotics.core.errors import FeatureSpecError, LossFileError
from ml3_robotics.core.learned_loss import FeatureSpec, LearnedLoss, LossConfig
from ml3_robotics.core.serialization import load_learned_loss, save_learned_loss


def _loss() -> LearnedLoss:
    spec = FeatureSpec(("a", "b", "c"), shift=(0.0, 1.0, 2.0), scale=(1.0, 2.0, 4.0))
    loss = LearnedLoss(
        LossConfig(spec, hidden=(7, 5), activation="elu", output_activation="none", bias_init=0.01)
    )
    loss.reset_parameters(torch.Generator().manual_seed(3))
    return loss


def test_round_trip(tmp_path):
    loss = _loss()
    weights, sidecar = save_learned_loss(loss, tmp_path / "loss", provenance={"seed": 3})
    assert weights.name == "loss.safetensors" and sidecar.name == "loss.json"
    loaded, doc = load_learned_loss(tmp_path / "loss.safetensors", expect_features=("a", "b", "c"))
    assert doc["provenance"] == {"seed": 3}
    assert loaded.config == loss.config
    x = torch.randn(11, 3)
    torch.testing.assert_close(loaded(x), loss(x), rtol=0, atol=0)


def test_loading_never_unpickles(tmp_path):
    # A pickle payload under the weights name must be refused, not executed.
    save_learned_loss(_loss(), tmp_path / "loss")
    torch.save({"x": torch.zeros(1)}, tmp_path / "loss.safetensors")
    with pytest.raises(LossFileError, match="not a readable safetensors"):
        load_learned_loss(tmp_path / "loss")


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(LossFileError, match="does not exist"):
        load_learned_loss(tmp_path / "nothing.safetensors")
    save_learned_loss(_loss(), tmp_path / "loss")
    (tmp_path / "loss.json").write_text("{not json")
    with pytest.raises(LossFileError, match="not valid JSON"):
        load_learned_loss(tmp_path / "loss")
    save_learned_loss(_loss(), tmp_path / "loss")
    (tmp_path / "loss.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(LossFileError, match="safetensors"):
        load_learned_loss(tmp_path / "loss")


def test_sidecar_architecture_must_match_weights(tmp_path):
    save_learned_loss(_loss(), tmp_path / "loss")
    doc = json.loads((tmp_path / "loss.json").read_text())
    doc["config"]["hidden"] = [9, 5]
    (tmp_path / "loss.json").write_text(json.dumps(doc))
    with pytest.raises(LossFileError, match="architecture"):
        load_learned_loss(tmp_path / "loss")


def test_feature_spec_mismatch_is_refused(tmp_path):
    save_learned_loss(_loss(), tmp_path / "loss")
    with pytest.raises(FeatureSpecError, match=r"needs \['c'\]"):
        load_learned_loss(tmp_path / "loss", expect_features=("a", "b"))
    with pytest.raises(FeatureSpecError, match="order"):
        load_learned_loss(tmp_path / "loss", expect_features=("b", "a", "c"))


def test_bad_loss_config():
    with pytest.raises(ValueError, match=r"activation: got 'rellu'.*'relu'"):
        LossConfig(FeatureSpec(("a",)), activation="rellu")
    with pytest.raises(ValueError, match="hidden"):
        LossConfig(FeatureSpec(("a",)), hidden=(0,))
    with pytest.raises(ValueError, match="unique"):
        FeatureSpec(("a", "a"))
    with pytest.raises(ValueError, match="scale"):
        FeatureSpec(("a",), scale=(0.0,))
    loss = _loss()
    with pytest.raises(ValueError, match=r"expected last dimension 3"):
        loss(torch.zeros(4, 2))


def test_learned_scale_multiplies_output_and_round_trips(tmp_path):
    spec = FeatureSpec(("a", "b", "c"))
    plain = LearnedLoss(LossConfig(spec, hidden=(7,), activation="elu"))
    scaled = LearnedLoss(LossConfig(spec, hidden=(7,), activation="elu", learn_scale=True,
                                    init_scale=4.0))  # fmt: skip
    scaled.net.load_state_dict(plain.net.state_dict())
    x = torch.randn(9, 3)
    torch.testing.assert_close(scaled(x), 4.0 * plain(x))
    assert "log_scale" in dict(scaled.named_parameters())  # meta-learned with the weights
    with torch.no_grad():
        scaled.log_scale.fill_(-1.5)
    save_learned_loss(scaled, tmp_path / "loss")
    loaded, _ = load_learned_loss(tmp_path / "loss.safetensors")
    assert loaded.config == scaled.config
    torch.testing.assert_close(loaded(x), scaled(x), rtol=0, atol=0)
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="init_scale"):
            LossConfig(spec, learn_scale=True, init_scale=bad)
