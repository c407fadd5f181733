"""The tiny HF-format checkpoint used by the tests loads through keras-hub like a real one."""

import json


def test_tiny_checkpoint_loads_with_bert_backbone(tiny_bert):
    import keras_hub
    import numpy as np

    backbone = keras_hub.models.BertBackbone.from_preset(str(tiny_bert))
    cfg = json.loads((tiny_bert / "config.json").read_text())
    assert backbone.num_layers == cfg["num_hidden_layers"] and backbone.hidden_dim == cfg["hidden_size"]
    # random weights were ported, not re-initialised: the word embeddings match the safetensors file
    from safetensors.numpy import load_file

    hf = load_file(str(tiny_bert / "model.safetensors"))
    np.testing.assert_allclose(backbone.get_layer("token_embedding").embeddings.numpy(),
                               hf["embeddings.word_embeddings.weight"], rtol=1e-6)
    out = backbone({"token_ids": np.ones((2, 8), "int32"), "segment_ids": np.zeros((2, 8), "int32"),
                    "padding_mask": np.ones((2, 8), "int32")})
    assert out["pooled_output"].shape == (2, cfg["hidden_size"])


def test_normalized_names_load_to_the_same_weights(tiny_bert, tmp_path):
    """The original-BERT naming (for keras-hub 0.25.1 on Python 3.10) ports the same weights."""
    import keras_hub
    import numpy as np
    from safetensors.numpy import load_file

    from trainer.models import normalize_bert_checkpoint

    out = normalize_bert_checkpoint(str(tiny_bert), str(tmp_path / "norm"))
    keys = set(load_file(f"{out}/model.safetensors"))
    assert "bert.embeddings.LayerNorm.gamma" in keys and "bert.encoder.layer.0.output.LayerNorm.beta" in keys
    a = keras_hub.models.BertBackbone.from_preset(str(tiny_bert))
    b = keras_hub.models.BertBackbone.from_preset(out)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


def test_checkpoint_with_a_given_vocab(tiny_bert, tmp_path):
    """vocab_file= copies an existing vocab and sizes the embeddings by it (bench/make_bert_checkpoint.py)."""
    import json

    from safetensors.numpy import load_file
    from emulators.bert_checkpoint import build_tiny_bert_checkpoint

    vocab = (tiny_bert / "vocab.txt").read_text(encoding="utf-8").splitlines()
    given = tmp_path / "given_vocab.txt"
    given.write_text("\n".join(vocab + ["[extra1]", "[extra2]"]) + "\n", encoding="utf-8")
    out = build_tiny_bert_checkpoint(tmp_path / "ckpt", hidden=16, layers=1, heads=2, intermediate=32,
                                     vocab_file=given)
    assert (out / "vocab.txt").read_text(encoding="utf-8") == given.read_text(encoding="utf-8")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["vocab_size"] == len(vocab) + 2 and cfg["hidden_size"] == 16
    assert load_file(str(out / "model.safetensors"))["embeddings.word_embeddings.weight"].shape == (len(vocab) + 2, 16)
