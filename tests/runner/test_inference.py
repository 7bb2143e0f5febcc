"""affiner.runner.inference: streaming chat from a tiny Llama with and without a LoRA adapter."""

from __future__ import annotations

from pathlib import Path

import pytest

from affiner.planner.errors import AffinerError
from affiner.runner.inference import ChatSession, find_adapter

MESSAGES = [{"role": "user", "content": "tell me a story about the sea"}]


@pytest.fixture(scope="module")
def adapter_dir(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter with non-zero weights (so the tuned answer differs from the base's)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    config = LoraConfig(
        r=4,
        lora_alpha=64,
        target_modules=["q_proj", "v_proj", "down_proj"],
        init_lora_weights=False,
    )
    peft_model = get_peft_model(model, config)
    run = tmp_path_factory.mktemp("run")
    peft_model.save_pretrained(run / "adapter")
    return run / "adapter"


def test_streams_tuned_and_base_answers_from_one_loaded_model(
    tiny_llama: Path, adapter_dir: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    session = ChatSession(tiny_llama, adapter_dir, device="cpu")
    pieces = list(session.stream(MESSAGES, use_adapter=True, max_new_tokens=12, temperature=0))
    tuned = "".join(pieces)
    base = session.generate(MESSAGES, use_adapter=False, max_new_tokens=12, temperature=0)
    assert len(pieces) > 1  # streamed in pieces, not one blob
    assert tuned and base and tuned != base

    # The base answer is exactly what the plain base model says: the adapter really was off.
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    plain = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    inputs = tokenizer.apply_chat_template(
        MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = plain.generate(
        **inputs, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    expected = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert base.strip() == expected.strip()
    # And the adapter is back on afterwards.
    assert session.generate(MESSAGES, max_new_tokens=12, temperature=0) == tuned


def test_sampling_and_plain_text_without_a_chat_template(tiny_llama: Path, tmp_path: Path) -> None:
    session = ChatSession(tiny_llama, None, device="cpu").load()
    session.tokenizer.chat_template = None
    text = session.generate(
        [{"role": "user", "content": "the cat sat"}], max_new_tokens=6, temperature=0.9
    )
    assert isinstance(text, str)


def test_find_adapter_prefers_final_then_best_then_newest(tmp_path: Path) -> None:
    with pytest.raises(AffinerError, match="no saved weights"):
        find_adapter(tmp_path)
    for name in ("checkpoints/checkpoint-5", "checkpoints/checkpoint-20"):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "adapter_config.json").write_text("{}")
        (tmp_path / name / "trainer_state.json").write_text("{}")
    assert find_adapter(tmp_path).name == "checkpoint-20"
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    assert find_adapter(tmp_path).name == "adapter"


def test_classifier_predicts_labels_with_probabilities(tiny_llama: Path) -> None:
    session = ChatSession(
        tiny_llama, None, task="classification", labels=["fresh", "rotten"], device="cpu"
    )
    predictions = session.classify(["loved this film", "boring plot"])
    assert [set(p.probabilities) for p in predictions] == [{"fresh", "rotten"}] * 2
    for p in predictions:
        assert abs(sum(p.probabilities.values()) - 1) < 1e-5
        assert p.label == max(p.probabilities, key=p.probabilities.get)
    with pytest.raises(AffinerError, match="classifier"):
        next(session.stream(MESSAGES))
