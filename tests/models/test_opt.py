"""OPT's table: which modules run before and after the blocks, for both OPT layouts."""
import pytest
import torch.nn as nn

from conftest import arch_model, save_model_dir
from llmc.config import ModelCfg
from llmc.errors import LlmcError
from llmc.models import load_model
from llmc.registry import MODELS

# One thread for speed alone (see conftest.one_torch_thread); no result depends on it.
pytestmark = pytest.mark.usefixtures("one_torch_thread")

OPT = MODELS["OPT"]


def test_pre_ln_opt_runs_final_layer_norm_and_no_projections():
    model = arch_model("opt")
    decoder = model.model.decoder
    assert decoder.project_in is None and decoder.project_out is None
    assert OPT.pre_block_modules(model) == [decoder.embed_tokens, decoder.embed_positions]
    assert OPT.post_block_modules(model) == [decoder.final_layer_norm, model.lm_head]


def test_opt_350m_layout_projects_in_and_out_and_has_no_final_norm():
    """opt-350m: word embeddings narrower than the blocks, layer norm after attention."""
    model = arch_model("opt_350m")
    decoder = model.model.decoder
    assert decoder.final_layer_norm is None
    assert (decoder.project_in.in_features, decoder.project_in.out_features) == (16, 32)
    assert OPT.pre_block_modules(model) == [decoder.embed_tokens, decoder.embed_positions,
                                            decoder.project_in]
    assert OPT.post_block_modules(model) == [decoder.project_out, model.lm_head]
    OPT.check(model)  # the projections are Linears outside the blocks: not listed, never pruned


def test_every_block_linear_is_in_one_group_with_its_bias():
    model = arch_model("opt")
    block = OPT.get_blocks(model)[0]
    listed = OPT.linear_names()
    assert sorted(listed) == sorted(n for n, m in block.named_modules() if isinstance(m, nn.Linear))
    assert all(block.get_submodule(name).bias is not None for name in listed)


def test_an_opt_checkpoint_under_another_type_names_opt(tiny_tokenizer, tmp_path):
    path = save_model_dir(arch_model("opt"), tiny_tokenizer, tmp_path / "opt")
    with pytest.raises(LlmcError, match="is a opt checkpoint; set model.type: OPT"):
        load_model(ModelCfg(type="Llama", path=path))
    handle = load_model(ModelCfg(type="OPT", path=path))
    assert handle.adapter is OPT and len(OPT.get_blocks(handle.model)) == 2
