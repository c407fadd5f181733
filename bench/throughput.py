"""Training-step throughput: Keras 3 + keras-hub BERT (the trainer's model) vs a PyTorch + transformers loop.

One run measures, side by side on the same device and the same BERT config/batch/sequence length:
  keras_jax      keras-hub BertBackbone + dense head, model.fit (XLA), AdamW, mixed_bfloat16 (the trainer's path)
  torch_eager    transformers BertForSequenceClassification, autocast bf16, AdamW, plain loop
  torch_compile  the same under torch.compile
Each contender runs in its own subprocess (so JAX's GPU memory pre-allocation cannot starve PyTorch). Random
weights, random token ids, every sequence exactly --seq-len long. Prints one JSON document.

    KERAS_BACKEND=jax python bench/throughput.py                 # BERT-base, seq 128, batch 256 (GPU)
    KERAS_BACKEND=jax python bench/throughput.py --small         # CPU-sized config
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

BASE = dict(vocab_size=30522, hidden=768, layers=12, heads=12, intermediate=3072, max_pos=512)
SMALL = dict(vocab_size=30522, hidden=256, layers=4, heads=4, intermediate=1024, max_pos=512)


def _keras_worker(cfg: dict, batch: int, seq: int, steps: int, warmup: int, precision: str) -> dict:
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras
    import keras_hub
    import numpy as np

    keras.mixed_precision.set_dtype_policy(precision)
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=cfg["vocab_size"], num_layers=cfg["layers"], num_heads=cfg["heads"],
        hidden_dim=cfg["hidden"], intermediate_dim=cfg["intermediate"], max_sequence_length=cfg["max_pos"])
    inputs = {k: keras.Input(shape=(None,), dtype="int32", name=k)
              for k in ("token_ids", "segment_ids", "padding_mask")}
    x = keras.layers.Dropout(0.1)(backbone(inputs)["pooled_output"])
    model = keras.Model(inputs, keras.layers.Dense(3, dtype="float32")(x))
    model.compile(optimizer=keras.optimizers.AdamW(2e-5), jit_compile=True,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    n = batch * (warmup + steps)
    data = {"token_ids": rng.integers(1000, cfg["vocab_size"], (n, seq), dtype=np.int32),
            "segment_ids": np.zeros((n, seq), np.int32), "padding_mask": np.ones((n, seq), np.int32)}
    labels = rng.integers(0, 3, n).astype(np.int32)

    marks = {}

    class _Timer(keras.callbacks.Callback):
        def _sync(self):  # JAX dispatches asynchronously: wait for the step to finish
            float(keras.ops.convert_to_numpy(self.model.trainable_variables[-1]).ravel()[0])

        def on_train_begin(self, logs=None):
            marks["begin"] = time.perf_counter()

        def on_train_batch_end(self, batch_i, logs=None):
            if batch_i == 0:
                self._sync()
                marks["first"] = time.perf_counter()
            if batch_i == warmup - 1:
                self._sync()
                marks["warm"] = time.perf_counter()

        def on_train_end(self, logs=None):
            self._sync()
            marks["end"] = time.perf_counter()

    model.fit(data, labels, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=[_Timer()])
    sec = marks["end"] - marks["warm"]
    return {"samples_per_second": round(batch * steps / sec, 1), "first_step_seconds": round(marks["first"] - marks["begin"], 2),
            "steps": steps, "parameters": int(model.count_params()), "backend": keras.backend.backend(),
            "versions": {"keras": keras.__version__, "keras_hub": keras_hub.__version__,
                         **({"jax": __import__("jax").__version__} if keras.backend.backend() == "jax" else {})},
            "device": str(keras.distribution.list_devices()[0])}


def _torch_worker(cfg: dict, batch: int, seq: int, steps: int, warmup: int, compiled: bool) -> dict:
    import torch
    import transformers

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    conf = transformers.BertConfig(vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden"],
                                   num_hidden_layers=cfg["layers"], num_attention_heads=cfg["heads"],
                                   intermediate_size=cfg["intermediate"], max_position_embeddings=cfg["max_pos"],
                                   num_labels=3)
    model = transformers.BertForSequenceClassification(conf).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, **({"fused": True} if dev == "cuda" else {}))
    ids = torch.randint(1000, cfg["vocab_size"], (batch, seq), device=dev)
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 3, (batch,), device=dev)

    def step(ids, mask, labels):
        with torch.autocast(device_type=dev, dtype=torch.bfloat16):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    fn = torch.compile(step) if compiled else step
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    fn(ids, mask, labels)
    sync()
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        fn(ids, mask, labels)
    sync()
    t1 = time.perf_counter()
    for _ in range(steps):
        fn(ids, mask, labels)
    sync()
    sec = time.perf_counter() - t1
    return {"samples_per_second": round(batch * steps / sec, 1), "first_step_seconds": round(first, 2),
            "steps": steps, "parameters": sum(p.numel() for p in model.parameters()),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu"}


def _run_worker(name: str, args) -> dict:
    cmd = [sys.executable, __file__, "--_worker", name, "--batch-size", str(args.batch_size), "--seq-len",
           str(args.seq_len), "--steps", str(args.steps), "--warmup", str(args.warmup)] + (["--small"] if args.small else [])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:  # report it and go on to the next contender
        return {"error": f"timed out after {args.timeout} s"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300], "stderr_tail": proc.stderr[-1500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="CPU-sized config (hidden 256, 4 layers, 4 heads).")
    p.add_argument("--batch-size", type=int, default=None, help="default 256 (BERT-base) / 16 (--small)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=None, help="timed steps; default 50 (BERT-base) / 10 (--small)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation included)")
    p.add_argument("--only", default="keras_jax,torch_eager,torch_compile")
    p.add_argument("--timeout", type=int, default=900, help="seconds per contender (its subprocess)")
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.batch_size = args.batch_size or (16 if args.small else 256)
    args.steps = args.steps or (10 if args.small else 50)
    cfg = SMALL if args.small else BASE

    if args._worker:
        if args._worker == "keras_jax":
            out = _keras_worker(cfg, args.batch_size, args.seq_len, args.steps, args.warmup, "mixed_bfloat16")
        else:
            out = _torch_worker(cfg, args.batch_size, args.seq_len, args.steps, args.warmup,
                                compiled=args._worker == "torch_compile")
        print(json.dumps(out))
        return

    result = {"config": "small" if args.small else "bert-base", "model": cfg, "batch_size": args.batch_size,
              "seq_len": args.seq_len, "precision": "bf16 (keras mixed_bfloat16 / torch autocast bfloat16)",
              "python": platform.python_version(), "results": {}}
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
        have_torch = True
    except Exception as exc:  # noqa: BLE001
        have_torch = False
        result["note"] = f"torch/transformers not importable ({type(exc).__name__}): reference loops skipped"
    for name in args.only.split(","):
        if name.startswith("torch") and not have_torch:
            result["results"][name] = {"skipped": "torch/transformers not importable"}
            continue
        result["results"][name] = _run_worker(name, args)
        print(json.dumps({name: result["results"][name]}), file=sys.stderr, flush=True)
    ok = {k: v["samples_per_second"] for k, v in result["results"].items() if "samples_per_second" in v}
    if "keras_jax" in ok and len(ok) > 1:
        result["keras_jax_faster_than_every_reference"] = all(ok["keras_jax"] > v for k, v in ok.items()
                                                               if k != "keras_jax")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
