"""Test-only stand-in for the modeling_baichuan.py that Baichuan checkpoints ship (remote code).

Written for llmc's tests, not copied: it keeps the published module names (model.embed_tokens,
model.layers[i].self_attn.W_pack / o_proj, mlp.gate_proj / up_proj / down_proj, RMSNorm
input_layernorm / post_attention_layernorm, model.norm, lm_head) and the published call
signatures of the decoder layer:
- rotary (Baichuan-7B, Baichuan2-7B): layer(hidden_states, attention_mask=, position_ids=,
  past_key_value=, output_attentions=, use_cache=), rotary applied inside the attention;
- ALiBi (Baichuan2-13B): layer(hidden_states, attention_mask=, past_key_value=,
  output_attentions=, use_cache=), where attention_mask carries the ALiBi bias plus the causal
  mask, built by the model;
and the layer returns a tuple. NormHead normalises its weight rows on its first forward in eval
mode and keeps the normalised weight, as Baichuan2 does. Unlike the published code, nothing is
cached on the module between calls (cos/sin, the ALiBi mask), so it also loads on transformers 5,
which builds models on the meta device.
"""
import math
import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_baichuan import BaichuanConfig

# Test-only: leave a trace whenever this checkpoint code runs (see configuration_baichuan.py).
if os.environ.get("LLMC_TEST_REMOTE_CODE_MARKER"):
    with open(os.environ["LLMC_TEST_REMOTE_CODE_MARKER"], "a") as marker:
        marker.write(f"{__name__}\n")


def alibi_slopes(heads: int):
    """ALiBi's per-head slopes: geometric from 2^(-8/n); interleaved when n is not a power of 2."""
    def geometric(n):
        first = 2 ** (-8 / n)
        return [first ** (i + 1) for i in range(n)]

    if math.log2(heads).is_integer():
        return geometric(heads)
    lower = 2 ** math.floor(math.log2(heads))
    return geometric(lower) + alibi_slopes(2 * lower)[0::2][: heads - lower]


def alibi_causal_mask(heads: int, length: int, like: torch.Tensor) -> torch.Tensor:
    """(heads, length, length): slope_h * key position, -inf above the diagonal."""
    slopes = torch.tensor(alibi_slopes(heads), dtype=torch.float32, device=like.device)
    bias = slopes.view(heads, 1, 1) * torch.arange(length, device=like.device).view(1, 1, length)
    future = torch.full((length, length), float("-inf"), device=like.device).triu(1)
    return (future.unsqueeze(0) + bias).to(like.dtype)


def causal_mask(batch: int, length: int, past: int, like: torch.Tensor) -> torch.Tensor:
    """(batch, 1, length, past + length) additive mask: the dtype's minimum on future keys."""
    mask = torch.full((length, past + length), torch.finfo(like.dtype).min, device=like.device)
    mask = mask.triu(past + 1)
    return mask.to(like.dtype).view(1, 1, length, past + length).expand(batch, 1, -1, -1)


def rotate_half(x):
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, position_ids):
    cos = cos.squeeze(1).squeeze(0)[position_ids].unsqueeze(1)  # (batch, 1, seq, dim)
    sin = sin.squeeze(1).squeeze(0)[position_ids].unsqueeze(1)
    q_embed = q.float() * cos + rotate_half(q.float()) * sin
    k_embed = k.float() * cos + rotate_half(k.float()) * sin
    return q_embed.to(q.dtype), k_embed.to(k.dtype)


class RotaryEmbedding(nn.Module):
    def __init__(self, dim, max_position_embeddings=4096, base=10000):
        super().__init__()
        self.dim, self.base = dim, base
        self.max_position_embeddings = max_position_embeddings

    def forward(self, x, seq_len=None):
        inv_freq = 1.0 / (self.base ** (torch.arange(0, self.dim, 2, device=x.device).float()
                                        / self.dim))
        freqs = torch.outer(torch.arange(seq_len, device=x.device, dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos()[None, None], emb.sin()[None, None]


class RMSNorm(nn.Module):
    def __init__(self, hidden_size, epsilon=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.epsilon = epsilon

    def forward(self, hidden_states):
        variance = hidden_states.to(torch.float32).pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.epsilon)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            hidden_states = hidden_states.to(self.weight.dtype)
        return self.weight * hidden_states


class MLP(nn.Module):
    def __init__(self, hidden_size, intermediate_size, hidden_act):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.act_fn = ACT2FN[hidden_act]

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class BaichuanAttention(nn.Module):
    def __init__(self, config: BaichuanConfig):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.hidden_size // self.num_heads
        self.W_pack = nn.Linear(self.hidden_size, 3 * self.hidden_size, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, self.hidden_size, bias=False)
        if config.position_encoding == "rotary":
            self.rotary_emb = RotaryEmbedding(self.head_dim, config.model_max_length)

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_value=None,
                output_attentions=False, use_cache=False):
        bsz, q_len, _ = hidden_states.shape
        proj = self.W_pack(hidden_states).unflatten(-1, (3, self.hidden_size))
        query, key, value = (proj[..., i, :].view(bsz, q_len, self.num_heads, self.head_dim)
                             .transpose(1, 2) for i in range(3))
        kv_len = q_len + (past_key_value[0].shape[-2] if past_key_value is not None else 0)
        if hasattr(self, "rotary_emb"):
            cos, sin = self.rotary_emb(value, seq_len=kv_len)
            query, key = apply_rotary_pos_emb(query, key, cos, sin, position_ids)
        if past_key_value is not None:
            key = torch.cat([past_key_value[0], key], dim=2)
            value = torch.cat([past_key_value[1], value], dim=2)
        present = (key, value) if use_cache else None

        weights = torch.matmul(query, key.transpose(2, 3)) / math.sqrt(self.head_dim)
        if attention_mask is not None:
            if q_len == 1:  # decoding with a cache: the last query row only
                attention_mask = attention_mask[..., -1:, :]
            weights = torch.max(weights + attention_mask,
                                torch.tensor(torch.finfo(weights.dtype).min, device=weights.device))
        weights = F.softmax(weights, dim=-1)
        output = torch.matmul(weights, value).transpose(1, 2).reshape(bsz, q_len, self.hidden_size)
        return self.o_proj(output), (weights if output_attentions else None), present


class BaichuanLayer(nn.Module):
    def __init__(self, config: BaichuanConfig):
        super().__init__()
        self.self_attn = BaichuanAttention(config)
        self.mlp = MLP(config.hidden_size, config.intermediate_size, config.hidden_act)
        self.input_layernorm = RMSNorm(config.hidden_size, epsilon=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, epsilon=config.rms_norm_eps)

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_value=None,
                output_attentions=False, use_cache=False):
        residual = hidden_states
        hidden_states, weights, present = self.self_attn(
            hidden_states=self.input_layernorm(hidden_states), attention_mask=attention_mask,
            position_ids=position_ids, past_key_value=past_key_value,
            output_attentions=output_attentions, use_cache=use_cache)
        hidden_states = residual + hidden_states
        hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        outputs = (hidden_states,)
        if output_attentions:
            outputs += (weights,)
        if use_cache:
            outputs += (present,)
        return outputs


class NormHead(nn.Module):
    """Baichuan2's lm_head: a Linear over row-normalised weights, normalised once in eval mode."""

    def __init__(self, hidden_size, vocab_size, bias=False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty((vocab_size, hidden_size)))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.first_flag = True

    def forward(self, hidden_states):
        if self.training:
            norm_weight = F.normalize(self.weight)
        elif self.first_flag:
            self.first_flag = False
            self.weight = nn.Parameter(F.normalize(self.weight))
            norm_weight = self.weight
        else:
            norm_weight = self.weight
        return F.linear(hidden_states, norm_weight)


class BaichuanPreTrainedModel(PreTrainedModel):
    config_class = BaichuanConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["BaichuanLayer"]

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, NormHead)):
            module.weight.data.normal_(mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            module.weight.data.fill_(1.0)


class BaichuanModel(BaichuanPreTrainedModel):
    def __init__(self, config: BaichuanConfig):
        super().__init__(config)
        self.n_head = config.num_attention_heads
        self.alibi = config.position_encoding == "alibi"
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(BaichuanLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, epsilon=config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=False, output_attentions=False,
                output_hidden_states=False, return_dict=True):
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        batch, length, _ = inputs_embeds.shape
        past = past_key_values[0][0].shape[2] if past_key_values is not None else 0
        if attention_mask is not None and attention_mask.dim() == 2 and not attention_mask.all():
            raise NotImplementedError("the test Baichuan code supports unpadded batches only")
        if self.alibi:
            mask = alibi_causal_mask(self.n_head, past + length, inputs_embeds)[:, -length:, :]
            layer_kwargs = {"attention_mask": mask}
        else:
            if position_ids is None:
                position_ids = torch.arange(past, past + length, device=inputs_embeds.device)
                position_ids = position_ids.unsqueeze(0).view(-1, length)
            layer_kwargs = {"attention_mask": causal_mask(batch, length, past, inputs_embeds),
                            "position_ids": position_ids}

        hidden_states = inputs_embeds
        all_hidden, all_attentions, next_cache = (), (), ()
        for index, layer in enumerate(self.layers):
            if output_hidden_states:
                all_hidden += (hidden_states,)
            outputs = layer(hidden_states, **layer_kwargs,
                            past_key_value=past_key_values[index] if past_key_values else None,
                            output_attentions=output_attentions, use_cache=use_cache)
            hidden_states = outputs[0]
            if output_attentions:
                all_attentions += (outputs[1],)
            if use_cache:
                next_cache += (outputs[-1],)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden += (hidden_states,)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states, past_key_values=next_cache if use_cache else None,
            hidden_states=all_hidden or None, attentions=all_attentions or None)


class BaichuanForCausalLM(BaichuanPreTrainedModel, GenerationMixin):
    def __init__(self, config: BaichuanConfig):
        super().__init__(config)
        self.model = BaichuanModel(config)
        if config.norm_head:
            self.lm_head = NormHead(config.hidden_size, config.vocab_size, bias=False)
        else:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_attentions=False,
                output_hidden_states=False, return_dict=True, **kwargs):
        use_cache = self.config.use_cache if use_cache is None else use_cache
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask,
                             position_ids=position_ids, past_key_values=past_key_values,
                             inputs_embeds=inputs_embeds, use_cache=use_cache,
                             output_attentions=output_attentions,
                             output_hidden_states=output_hidden_states)
        logits = self.lm_head(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            shift_logits = logits[..., :-1, :].reshape(-1, logits.shape[-1]).float()
            loss = F.cross_entropy(shift_logits, labels[..., 1:].reshape(-1))
            loss = loss + self.config.z_loss_weight * (shift_logits.max(-1).values ** 2).mean()
        return CausalLMOutputWithPast(loss=loss, logits=logits,
                                      past_key_values=outputs.past_key_values,
                                      hidden_states=outputs.hidden_states,
                                      attentions=outputs.attentions)
