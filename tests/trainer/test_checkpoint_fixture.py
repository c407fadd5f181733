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
