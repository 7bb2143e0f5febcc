"""Counting rules for the older block layouts: GPT-2, GPT-NeoX (Pythia), Falcon, OPT and BERT.

These predate the Llama block: LayerNorm with biases, biased projections, plain (not gated)
MLPs, learned position embeddings (GPT-2, OPT, BERT), fused query-key-value projections
(GPT-2's transposed ``Conv1D``, GPT-NeoX, Falcon) and, for BERT, encoder heads. Each rule
follows the module tree transformers 5 builds for the class; the defaults dicts are the
config classes' own.
"""

from __future__ import annotations

from affiner.planner.models.llama_style import decoder_head
from affiner.planner.models.shape_rules import ConfigView, Family, Shape, Tally, UnsupportedClass

_DECODER_SUFFIXES = ("ForCausalLM", "Model", "ForSequenceClassification")


def _gpt2(cfg: ConfigView, cls: str) -> Shape:
    hidden = cfg.integer("n_embd", "hidden_size")
    layers = cfg.integer("n_layer", "num_hidden_layers")
    heads = cfg.integer("n_head", "num_attention_heads")
    positions = cfg.integer("n_positions", "max_position_embeddings")
    vocab = cfg.integer("vocab_size")
    inner = cfg.integer("n_inner", default=4 * hidden)
    tally = Tally()
    tally.add("embeddings", (vocab + positions) * hidden)  # wte + wpe
    tally.norm(hidden, 2 * layers + 1, bias=True)  # ln_1, ln_2 per block; ln_f
    tally.linear("attention", "c_attn", hidden, 3 * hidden, layers, bias=True, kind="conv1d")
    tally.linear("attention", "c_proj", hidden, hidden, layers, bias=True, kind="conv1d")
    if cfg.flag("add_cross_attention"):
        tally.linear("attention", "c_attn", hidden, 2 * hidden, layers, bias=True, kind="conv1d")
        tally.linear("attention", "q_attn", hidden, hidden, layers, bias=True, kind="conv1d")
        tally.linear("attention", "c_proj", hidden, hidden, layers, bias=True, kind="conv1d")
        tally.norm(hidden, layers, bias=True)
    tally.linear("mlp", "c_fc", hidden, inner, layers, bias=True, kind="conv1d")
    tally.linear("mlp", "c_proj", inner, hidden, layers, bias=True, kind="conv1d")
    tied = decoder_head(
        tally, cls, cfg, width=hidden, vocab=vocab, tied=cfg.flag("tie_word_embeddings")
    )
    return Shape(
        architecture=cls,
        hidden_size=hidden,
        num_layers=layers,
        num_attention_heads=heads,
        num_kv_heads=heads,
        head_dim=hidden // heads,
        intermediate_size=inner,
        vocab_size=vocab,
        max_position_embeddings=positions,
        tied_embeddings=tied,
        mlp_kind="plain",
        hidden_act=cfg.text("activation_function"),
        norm_kind="layernorm",
        tally=tally,
        attention_dropout=cfg.number("attn_pdrop"),
        hidden_dropout=cfg.number("resid_pdrop"),
    )


def _gpt_neox(cfg: ConfigView, cls: str) -> Shape:
    hidden = cfg.integer("hidden_size")
    layers = cfg.integer("num_hidden_layers")
    heads = cfg.integer("num_attention_heads")
    inter = cfg.integer("intermediate_size")
    vocab = cfg.integer("vocab_size")
    attn_bias = cfg.flag("attention_bias")
    tally = Tally()
    tally.add("embeddings", vocab * hidden)  # embed_in
    tally.norm(hidden, 2 * layers + 1, bias=True)  # input/post_attention per block; final
    tally.linear("attention", "query_key_value", hidden, 3 * hidden, layers, bias=attn_bias)
    tally.linear("attention", "dense", hidden, hidden, layers, bias=attn_bias)
    tally.linear("mlp", "dense_h_to_4h", hidden, inter, layers, bias=True)
    tally.linear("mlp", "dense_4h_to_h", inter, hidden, layers, bias=True)
    tied = decoder_head(
        tally, cls, cfg, width=hidden, vocab=vocab, tied=cfg.flag("tie_word_embeddings")
    )
    return Shape(
        architecture=cls,
        hidden_size=hidden,
        num_layers=layers,
        num_attention_heads=heads,
        num_kv_heads=heads,
        head_dim=hidden // heads,
        intermediate_size=inter,
        vocab_size=vocab,
        max_position_embeddings=cfg.integer("max_position_embeddings"),
        tied_embeddings=tied,
        mlp_kind="plain",
        hidden_act=cfg.text("hidden_act"),
        norm_kind="layernorm",
        tally=tally,
        parallel_residual=cfg.flag("use_parallel_residual"),
        attention_dropout=cfg.number("attention_dropout"),
        hidden_dropout=cfg.number("hidden_dropout"),
    )


def _falcon(cfg: ConfigView, cls: str) -> Shape:
    hidden = cfg.integer("hidden_size", "n_embed")
    layers = cfg.integer("num_hidden_layers")
    heads = cfg.integer("num_attention_heads")
    vocab = cfg.integer("vocab_size")
    head_dim = hidden // heads
    new_arch = cfg.flag("new_decoder_architecture")
    multi_query = cfg.flag("multi_query")
    parallel = cfg.flag("parallel_attn")
    bias = cfg.flag("bias")
    ffn = cfg.integer("ffn_hidden_size", default=4 * hidden)
    if new_arch:
        kv_heads = cfg.integer("num_kv_heads", default=heads)
        qkv_out = (heads + 2 * kv_heads) * head_dim
    elif multi_query:
        kv_heads, qkv_out = 1, hidden + 2 * head_dim
    else:
        kv_heads, qkv_out = heads, 3 * hidden
    # One LayerNorm per block when attention and MLP run in parallel off one norm (Falcon-7B);
    # two for sequential blocks, or for the new architecture's separate ln_attn / ln_mlp.
    ln_parallel = cfg.get("num_ln_in_parallel_attn", default=2 if new_arch else None)
    norms_per_layer = 2 if (not parallel or ln_parallel == 2) else 1
    tally = Tally()
    tally.add("embeddings", vocab * hidden)  # word_embeddings (rotary or ALiBi: no parameters)
    tally.norm(hidden, norms_per_layer * layers + 1, bias=True)  # per block; ln_f
    tally.linear("attention", "query_key_value", hidden, qkv_out, layers, bias=bias)
    tally.linear("attention", "dense", hidden, hidden, layers, bias=bias)
    tally.linear("mlp", "dense_h_to_4h", hidden, ffn, layers, bias=bias)
    tally.linear("mlp", "dense_4h_to_h", ffn, hidden, layers, bias=bias)
    tied = decoder_head(
        tally, cls, cfg, width=hidden, vocab=vocab, tied=cfg.flag("tie_word_embeddings")
    )
    return Shape(
        architecture=cls,
        hidden_size=hidden,
        num_layers=layers,
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=ffn,
        vocab_size=vocab,
        max_position_embeddings=cfg.integer("max_position_embeddings"),
        tied_embeddings=tied,
        mlp_kind="plain",
        hidden_act=cfg.text("activation"),
        norm_kind="layernorm",
        tally=tally,
        parallel_residual=parallel or new_arch,
        attention_dropout=cfg.number("attention_dropout"),
        hidden_dropout=cfg.number("hidden_dropout"),
    )


def _opt(cfg: ConfigView, cls: str) -> Shape:
    hidden = cfg.integer("hidden_size")
    layers = cfg.integer("num_hidden_layers")
    heads = cfg.integer("num_attention_heads")
    ffn = cfg.integer("ffn_dim")
    vocab = cfg.integer("vocab_size")
    positions = cfg.integer("max_position_embeddings")
    word_dim = cfg.integer("word_embed_proj_dim", default=hidden)
    bias = cfg.flag("enable_bias")
    affine = cfg.flag("layer_norm_elementwise_affine")
    tally = Tally()
    # embed_tokens is word_dim wide; learned positions keep OPT's offset of 2 rows.
    tally.add("embeddings", vocab * word_dim + (positions + 2) * hidden)
    if word_dim != hidden:  # OPT-350m: project between the 512-wide embedding and the blocks
        tally.linear("other", "project_in", word_dim, hidden, 1, bias=False)
        tally.linear("other", "project_out", hidden, word_dim, 1, bias=False)
    final_norm = cfg.flag("do_layer_norm_before") and not cfg.flag("_remove_final_layer_norm")
    if affine:
        tally.norm(hidden, 2 * layers + (1 if final_norm else 0), bias=True)
    for name in ("k_proj", "v_proj", "q_proj", "out_proj"):
        tally.linear("attention", name, hidden, hidden, layers, bias=bias)
    tally.linear("mlp", "fc1", hidden, ffn, layers, bias=bias)
    tally.linear("mlp", "fc2", ffn, hidden, layers, bias=bias)
    tied = decoder_head(
        tally, cls, cfg, width=word_dim, vocab=vocab, tied=cfg.flag("tie_word_embeddings")
    )
    return Shape(
        architecture=cls,
        hidden_size=hidden,
        num_layers=layers,
        num_attention_heads=heads,
        num_kv_heads=heads,
        head_dim=hidden // heads,
        intermediate_size=ffn,
        vocab_size=vocab,
        max_position_embeddings=positions,
        tied_embeddings=tied,
        mlp_kind="plain",
        hidden_act=cfg.text("activation_function"),
        norm_kind="layernorm",
        tally=tally,
        attention_dropout=cfg.number("attention_dropout"),
        hidden_dropout=cfg.number("dropout"),
    )


#: BERT classes → (has pooler, has masked-LM head, extra classifier width or None).
_BERT_HEADS = {
    "BertModel": (True, False, None),
    "BertForMaskedLM": (False, True, None),
    "BertLMHeadModel": (False, True, None),
    "BertForPreTraining": (True, True, 2),
    "BertForNextSentencePrediction": (True, False, 2),
    "BertForSequenceClassification": (True, False, "labels"),
    "BertForMultipleChoice": (True, False, 1),
    "BertForTokenClassification": (False, False, "labels"),
    "BertForQuestionAnswering": (False, False, "labels"),
}


def _bert(cfg: ConfigView, cls: str) -> Shape:
    hidden = cfg.integer("hidden_size")
    layers = cfg.integer("num_hidden_layers")
    heads = cfg.integer("num_attention_heads")
    inter = cfg.integer("intermediate_size")
    vocab = cfg.integer("vocab_size")
    positions = cfg.integer("max_position_embeddings")
    pooler, mlm, classifier = _BERT_HEADS[cls]
    tied = cfg.flag("tie_word_embeddings")
    if mlm and not tied:
        raise UnsupportedClass(cls)  # untied MLM decoders are rare: leave them to the meta count
    tally = Tally()
    tally.add("embeddings", (vocab + positions + cfg.integer("type_vocab_size")) * hidden)
    tally.norm(hidden, 1 + 2 * layers, bias=True)  # embeddings.LayerNorm; two per block
    blocks = 2 * layers if cfg.flag("add_cross_attention") else layers
    for name in ("query", "key", "value"):
        tally.linear("attention", name, hidden, hidden, blocks, bias=True)
    tally.linear("attention", "dense", hidden, hidden, blocks, bias=True)  # attention.output
    if blocks > layers:
        tally.norm(hidden, layers, bias=True)  # crossattention.output.LayerNorm
    tally.linear("mlp", "dense", hidden, inter, layers, bias=True)  # intermediate
    tally.linear("mlp", "dense", inter, hidden, layers, bias=True)  # output
    if pooler:
        tally.head_linear(hidden, hidden, bias=True)
    if mlm:  # transform (dense + LayerNorm) and the per-token bias; the decoder is tied
        tally.head_linear(hidden, hidden, bias=True)
        tally.norm(hidden, 1, bias=True, part="head")
        tally.add("head", vocab)
    if classifier is not None:
        width = cfg.num_labels() if classifier == "labels" else classifier
        tally.head_linear(hidden, width, bias=True)
    return Shape(
        architecture=cls,
        hidden_size=hidden,
        num_layers=layers,
        num_attention_heads=heads,
        num_kv_heads=heads,
        head_dim=hidden // heads,
        intermediate_size=inter,
        vocab_size=vocab,
        max_position_embeddings=positions,
        tied_embeddings=mlm,
        mlp_kind="plain",
        hidden_act=cfg.text("hidden_act"),
        norm_kind="layernorm",
        tally=tally,
        attention_dropout=cfg.number("attention_probs_dropout_prob"),
        hidden_dropout=cfg.number("hidden_dropout_prob"),
        is_decoder=cfg.flag("is_decoder"),
    )


#: ``model_type`` → counting rule, for the pre-Llama families.
CLASSIC_FAMILIES: dict[str, Family] = {
    "gpt2": Family(
        _gpt2,
        {
            "vocab_size": 50257,
            "n_embd": 768,
            "n_layer": 12,
            "n_head": 12,
            "n_positions": 1024,
            "activation_function": "gelu_new",
            "attn_pdrop": 0.1,
            "resid_pdrop": 0.1,
            "tie_word_embeddings": True,
        },
        "GPT2",
        "GPT2LMHeadModel",
        ("LMHeadModel", "Model", "ForSequenceClassification"),
    ),
    "gpt_neox": Family(
        _gpt_neox,
        {
            "vocab_size": 50432,
            "hidden_size": 6144,
            "num_hidden_layers": 44,
            "num_attention_heads": 64,
            "intermediate_size": 24576,
            "hidden_act": "gelu",
            "max_position_embeddings": 2048,
            "attention_bias": True,
            "use_parallel_residual": True,
            "attention_dropout": 0.0,
            "hidden_dropout": 0.0,
            "tie_word_embeddings": False,
        },
        "GPTNeoX",
        "GPTNeoXForCausalLM",
        _DECODER_SUFFIXES,
    ),
    "falcon": Family(
        _falcon,
        {
            "vocab_size": 65024,
            "hidden_size": 4544,
            "num_hidden_layers": 32,
            "num_attention_heads": 71,
            "new_decoder_architecture": False,
            "multi_query": True,
            "parallel_attn": True,
            "bias": False,
            "max_position_embeddings": 2048,
            "activation": "gelu",
            "attention_dropout": 0.0,
            "hidden_dropout": 0.0,
            "tie_word_embeddings": True,
        },
        "Falcon",
        "FalconForCausalLM",
        _DECODER_SUFFIXES,
    ),
    "opt": Family(
        _opt,
        {
            "vocab_size": 50272,
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "ffn_dim": 3072,
            "max_position_embeddings": 2048,
            "enable_bias": True,
            "do_layer_norm_before": True,
            "layer_norm_elementwise_affine": True,
            "_remove_final_layer_norm": False,
            "activation_function": "relu",
            "attention_dropout": 0.0,
            "dropout": 0.1,
            "tie_word_embeddings": True,
        },
        "OPT",
        "OPTForCausalLM",
        _DECODER_SUFFIXES,
    ),
    "bert": Family(
        _bert,
        {
            "vocab_size": 30522,
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "hidden_act": "gelu",
            "max_position_embeddings": 512,
            "type_vocab_size": 2,
            "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1,
            "is_decoder": False,
            "add_cross_attention": False,
            "tie_word_embeddings": True,
        },
        "Bert",
        "BertModel",
        tuple(name.removeprefix("Bert") for name in _BERT_HEADS),
    ),
}
