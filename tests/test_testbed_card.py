"""tsloss_harness.testbed.card: a testbed's record (testbed.json) and its README."""

from tsloss_harness.testbed import card


def _card(**over) -> dict:
    base = {
        "arch": "llama",
        "size": "quick",
        "model_class": "LlamaForCausalLM",
        "shape": {"num_hidden_layers": 2, "hidden_size": 128, "vocab_size": 1200, "parameters": 123456},
        "corpus": {"kind": "generated", "rows": 4000},
        "steps": 150,
        "stopped_early": False,
        "training": {"batch_size": 16, "seq_len": 256},
        "tokens_seen": 614400,
        "loss_first": 7.5,
        "loss_final": 1.25,
        "val_loss": None,
        "seed": 0,
        "wall_s": 50.0,
        "cpu_s": 90.0,
    }
    return base | over


def test_read_card_is_none_without_a_readable_card(tmp_path):
    assert card.read_card(tmp_path) is None
    (tmp_path / card.CARD_NAME).write_text("{not json")
    assert card.read_card(tmp_path) is None
    (tmp_path / card.CARD_NAME).write_text('{"key": "k"}')
    assert card.read_card(tmp_path) == {"key": "k"}


def test_readme_states_shape_corpus_and_an_early_stop():
    text = card.card_readme(_card())
    assert "2 layers x 128 hidden" in text and "generated GSM8K-format rows (4000)" in text
    assert "123,456 parameters" in text and "stopped early" not in text and "held-out None" in text
    capped = card.card_readme(_card(stopped_early=True, val_loss=1.23456))
    assert "stopped early by the time cap" in capped and "held-out 1.235" in capped
