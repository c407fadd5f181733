"""Model builders: a BERT classifier on a keras-hub backbone from an HF-format checkpoint, and a plain-Keras BiLSTM.

Of keras-hub only BertBackbone.from_preset is used (the head is plain Keras layers). The image pins keras-hub 0.32.0;
the retry with the original BERT weight names keeps older keras-hub releases (0.25.1) able to read newer exports.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Optional

import keras
import numpy as np

from trainer.errors import CheckpointError, describe

log = logging.getLogger(__name__)


def build_bert(checkpoint_dir: str, num_classes: int, dropout: float, max_seq_len: int,
               pooling: str = "cls", work_dir: Optional[str] = None) -> keras.Model:
    """Pooled [CLS] (or masked mean, pooling="mean") -> dropout -> dense logits, on a backbone loaded from `checkpoint_dir`."""
    import keras_hub

    with open(os.path.join(checkpoint_dir, "config.json")) as f:
        hf_config = json.load(f)
    max_pos = int(hf_config.get("max_position_embeddings", 512))
    if max_seq_len > max_pos:
        raise CheckpointError(f"--max-seq-len {max_seq_len} exceeds the checkpoint's max_position_embeddings "
                              f"({max_pos})")
    from safetensors import SafetensorError

    # max_sequence_length: keras-hub 0.25.1 ignores the checkpoint's max_position_embeddings (always 512).
    try:
        backbone = keras_hub.models.BertBackbone.from_preset(checkpoint_dir, max_sequence_length=max_pos)
    except SafetensorError as exc:
        # A weight name this keras-hub does not know: 0.25.1 (the last release for Python 3.10) only reads the
        # original BERT names ("bert." prefix, LayerNorm gamma/beta); newer HF exports use LayerNorm weight/bias
        # and no prefix. Any other error is not a naming problem and goes up unchanged.
        log.info("keras-hub cannot read %s as is (%s); retrying with the original BERT weight names",
                 checkpoint_dir, describe(exc))
        renamed = normalize_bert_checkpoint(checkpoint_dir, os.path.join(work_dir or checkpoint_dir, "normalized"))
        try:
            backbone = keras_hub.models.BertBackbone.from_preset(renamed, max_sequence_length=max_pos)
        except SafetensorError as second:
            raise CheckpointError(f"cannot load BERT checkpoint {checkpoint_dir}: {describe(exc)} (with the "
                                  f"original BERT weight names: {describe(second)})") from exc
    # A plain functional model rather than keras_hub's BertTextClassifier: the latter is a PipelineModel
    # whose fit() routes numpy batches through grain/tf.data, which a TF-free JAX install does not have.
    inputs = {
        "token_ids": keras.Input(shape=(None,), dtype="int32", name="token_ids"),
        "segment_ids": keras.Input(shape=(None,), dtype="int32", name="segment_ids"),
        "padding_mask": keras.Input(shape=(None,), dtype="int32", name="padding_mask"),
    }
    outputs = backbone(inputs)
    if pooling == "cls":
        pooled = outputs["pooled_output"]  # tanh(dense([CLS])), BERT's pre-trained pooler
    else:  # mean of the real tokens: what sentence-embedding checkpoints (e.g. all-MiniLM) were trained for
        pooled = keras.layers.GlobalAveragePooling1D(name="mean_pool")(outputs["sequence_output"],
                                                                       mask=inputs["padding_mask"])
    x = keras.layers.Dropout(dropout, name="classifier_dropout")(pooled)
    logits = keras.layers.Dense(num_classes, name="logits", dtype="float32",
                                kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02))(x)
    return keras.Model(inputs, logits, name="bert_classifier")


def normalize_bert_checkpoint(checkpoint_dir: str, out_dir: str) -> str:
    """Copy of an HF BERT checkpoint with the original BERT weight names: `bert.` prefix on encoder weights,
    LayerNorm `gamma`/`beta`. Both keras-hub 0.25.1 and 0.32 read these. Returns `out_dir`."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(os.path.join(checkpoint_dir, "model.safetensors"))
    renamed = {}
    for key, value in tensors.items():
        if not key.startswith(("bert.", "cls.", "classifier.")):
            key = "bert." + key
        if ".LayerNorm." in key:
            key = key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        renamed[key] = value
    os.makedirs(out_dir, exist_ok=True)
    save_file(renamed, os.path.join(out_dir, "model.safetensors"))
    shutil.copyfile(os.path.join(checkpoint_dir, "config.json"), os.path.join(out_dir, "config.json"))
    return out_dir


def pretrained_token_embeddings(checkpoint_dir: str, vocab_size: int) -> np.ndarray:
    """The word-piece embedding matrix (vocab x hidden) of an HF BERT checkpoint, for initialising the BiLSTM's
    embeddings: the FinBERT paper's LSTM baseline also starts from pre-trained word vectors (GloVe)."""
    from safetensors import safe_open

    path = os.path.join(checkpoint_dir, "model.safetensors")
    with safe_open(path, framework="np") as f:
        names = [k for k in f.keys() if k.endswith("embeddings.word_embeddings.weight")]
        if not names:
            raise CheckpointError(f"checkpoint {checkpoint_dir} has no embeddings.word_embeddings.weight")
        matrix = f.get_tensor(names[0]).astype(np.float32)
    if matrix.shape[0] != vocab_size:
        raise CheckpointError(f"checkpoint {checkpoint_dir}: {matrix.shape[0]} embedding rows but vocab.txt has "
                              f"{vocab_size} tokens")
    return matrix


def build_lstm(vocab_size: int, num_classes: int, embedding_dim: int, units: int, dropout: float,
               pooling: str = "mean_max", embeddings: Optional[np.ndarray] = None,
               train_embeddings: bool = True) -> keras.Model:
    """Embedding (id 0 = [PAD] masked; `embeddings` as initial values, their width overriding embedding_dim)
    -> BiLSTM -> masked mean pooling (pooling="mean_max": concatenated with masked max pooling) -> dense logits."""
    token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    if embeddings is not None:
        embedding_dim = embeddings.shape[1]
    embedding = keras.layers.Embedding(vocab_size, embedding_dim, mask_zero=True, name="embedding")
    x = embedding(token_ids)
    if embeddings is not None:  # set after building: a Constant initializer would put the matrix in the config
        embedding.set_weights([embeddings])
    embedding.trainable = train_embeddings
    x = keras.layers.SpatialDropout1D(dropout, name="embedding_dropout")(x)
    x = keras.layers.Bidirectional(keras.layers.LSTM(units, return_sequences=True), name="bilstm")(x)
    # Mean over the real (unmasked) time steps; GlobalMaxPooling1D would ignore the mask.
    pooled = keras.layers.GlobalAveragePooling1D(name="mean_pool")(x)
    if pooling == "mean_max":
        # Masked max: the BiLSTM outputs lie in (-1, 1) and are 0 on [PAD] steps, so shifting the [PAD] steps
        # to -2 keeps them out of the max (result independent of the padded length).
        pad = keras.ops.expand_dims(keras.ops.cast(keras.ops.equal(token_ids, 0), x.dtype), -1)
        max_pooled = keras.layers.GlobalMaxPooling1D(name="max_pool")(x - 2.0 * pad)
        pooled = keras.layers.Concatenate(name="mean_max_pool")([pooled, max_pooled])
    x = keras.layers.Dropout(dropout, name="dropout")(pooled)
    logits = keras.layers.Dense(num_classes, name="logits", dtype="float32")(x)
    return keras.Model({"token_ids": token_ids}, logits, name="bilstm_classifier")
