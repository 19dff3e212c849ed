"""A synthetic base of Llama 3.1 8B's shapes, random Q4_K weights, written where it is measured (nothing to carry).

The tokenizer is an existing GGUF's (the embedded model's), its vocabulary padded with reserved control tokens to
Llama 3.1's 128,256 rows, so the embedding and output matrices have the real model's size. The weights are random
Q4_K blocks with a small fixed scale: the text is noise, the memory traffic and arithmetic per token are an 8B's.
    python bench/synthetic_gguf.py OUT.gguf [--tokenizer-from GGUF]
"""

import argparse
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter, TokenType

LLAMA_31_8B = dict(n_embd=4096, n_layer=32, n_head=32, n_head_kv=8, n_ff=14336, n_vocab=128256, rope_base=500000.0)
Q4_K_BLOCK = np.dtype([("d", "<f2"), ("dmin", "<f2"), ("scales", "u1", 12), ("qs", "u1", 128)])  # 256 weights, 144 bytes


def _q4k(rows: int, cols: int, pool: np.ndarray) -> np.ndarray:
    """rows x cols weights as Q4_K bytes, (rows, cols // 256 * 144), cut from a pool of random blocks."""
    n = rows * cols // 256
    reps = -(-n // len(pool))
    return np.tile(pool, reps)[:n].view(np.uint8).reshape(rows, cols // 256 * 144)


def write(out: Path, tokenizer_from: Path, shapes: dict = LLAMA_31_8B, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    pool = np.frombuffer(rng.bytes(Q4_K_BLOCK.itemsize * (1 << 18)), dtype=Q4_K_BLOCK).copy()  # 36 MiB of blocks
    pool["d"], pool["dmin"] = 2e-3, 0.0
    src = GGUFReader(tokenizer_from)
    E, L, H, KV, F, V = (shapes[k] for k in ("n_embd", "n_layer", "n_head", "n_head_kv", "n_ff", "n_vocab"))
    w = GGUFWriter(out, "llama")
    w.add_name("synthetic-llama-3.1-8b-shapes")
    w.add_block_count(L)
    w.add_context_length(131072)
    w.add_embedding_length(E)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_rope_freq_base(shapes["rope_base"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(E // H)
    w.add_vocab_size(V)
    w.add_file_type(15)  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    tokens = [bytes(t) for t in _strings(src, "tokenizer.ggml.tokens")]
    field = src.fields["tokenizer.ggml.token_type"]
    types = [int(field.parts[i][0]) for i in field.data]
    pad = V - len(tokens)
    w.add_tokenizer_model(_string(src, "tokenizer.ggml.model"))
    w.add_tokenizer_pre(_string(src, "tokenizer.ggml.pre"))
    w.add_token_list(tokens + [f"<|reserved_special_token_{i}|>".encode() for i in range(pad)])
    w.add_token_types(types + [TokenType.CONTROL] * pad)
    w.add_token_merges(_strings(src, "tokenizer.ggml.merges"))
    for key, add in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id), ("padding", w.add_pad_token_id)):
        add(int(src.fields[f"tokenizer.ggml.{key}_token_id"].parts[-1][0]))
    w.add_add_bos_token(False)
    w.add_chat_template(_string(src, "tokenizer.chat_template"))

    def q4k(name: str, rows: int, cols: int) -> None:
        w.add_tensor(name, _q4k(rows, cols, pool), raw_dtype=GGMLQuantizationType.Q4_K)

    def norm(name: str) -> None:
        w.add_tensor(name, np.ones(E, dtype=np.float32))

    q4k("token_embd.weight", V, E)
    for i in range(L):
        norm(f"blk.{i}.attn_norm.weight")
        q4k(f"blk.{i}.attn_q.weight", E, E)
        q4k(f"blk.{i}.attn_k.weight", E // H * KV, E)
        q4k(f"blk.{i}.attn_v.weight", E // H * KV, E)
        q4k(f"blk.{i}.attn_output.weight", E, E)
        norm(f"blk.{i}.ffn_norm.weight")
        q4k(f"blk.{i}.ffn_gate.weight", F, E)
        q4k(f"blk.{i}.ffn_up.weight", F, E)
        q4k(f"blk.{i}.ffn_down.weight", E, F)
    norm("output_norm.weight")
    q4k("output.weight", V, E)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def _string(reader: GGUFReader, key: str) -> str:
    return bytes(reader.fields[key].parts[-1]).decode()


def _strings(reader: GGUFReader, key: str) -> list:
    field = reader.fields[key]
    return [bytes(field.parts[i]) for i in field.data]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--tokenizer-from", type=Path, default=None, help="default: the embedded model")
    args = ap.parse_args()
    if args.tokenizer_from is None:
        from appliance.trust.builtin import embedded_pin

        args.tokenizer_from = embedded_pin().path
    print(write(args.out, args.tokenizer_from))
