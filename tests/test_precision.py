import pytest
import torch
from transformers import TrainingArguments

from chatforge.training import precision


def test_measuring_bf16_speed_leaves_the_random_state_alone():
    precision.measured_bf16_is_slow.cache_clear()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    assert isinstance(precision.measured_bf16_is_slow(size=64, repeats=2), bool)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("value, slow", [("1", False), ("0", True)])
def test_the_environment_overrides_the_measurement(monkeypatch, value, slow):
    monkeypatch.setattr(precision, "measured_bf16_is_slow", lambda: not slow)
    monkeypatch.setenv(precision.CPU_BF16_ENV, value)
    assert precision.cpu_bf16_is_slow() is slow
    assert precision.mixed_precision(True, use_cpu=True) == ("no" if slow else "bf16")
    monkeypatch.setenv(precision.CPU_BF16_ENV, "yes")
    with pytest.raises(ValueError, match="CHATFORGE_CPU_BF16='yes'"):
        precision.cpu_bf16_is_slow()


@pytest.mark.parametrize("slow", [True, False])
def test_a_cpu_run_asked_for_bf16_trains_in_fp32_where_the_cpu_emulates_it(tmp_path, monkeypatch, slow):
    monkeypatch.setattr(precision, "cpu_bf16_is_slow", lambda: slow)
    args = TrainingArguments(output_dir=str(tmp_path), bf16=True, use_cpu=True, report_to=[])
    if slow:
        with pytest.warns(UserWarning, match="no native bf16 arithmetic") as caught:
            precision.fit_precision(args)
        assert caught[0].filename == __file__  # the warning names the caller, not the precision module
    else:
        precision.fit_precision(args)
    assert (args.bf16, args.mixed_precision) == ((False, "no") if slow else (True, "bf16"))
    assert precision.mixed_precision(True, use_cpu=True) == ("no" if slow else "bf16")
    assert precision.keep_bf16(True, on_cpu=False)  # accelerators keep what they are asked for
    assert not precision.keep_bf16(False, on_cpu=True)
