"""The fast path's own GPT loop against coqui-tts's reference forward, on a tiny XTTS (CPU, fp32)."""

from __future__ import annotations

import pytest
import torch

from tests.xtts_fast_support import cond_and_speaker, text_tokens, tiny_xtts
from workers.engines.xtts_fast.gpt_decoder import GptDecoder
from workers.engines.xtts_fast.sampling import Sampler, SamplingParams

REL_TOL = 1e-4
GREEDY = SamplingParams(temperature=0.0, top_k=50, top_p=0.85, repetition_penalty=5.0)


@pytest.fixture(scope="module")
def model():
    return tiny_xtts(seed=0)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def greedy_decode(dec: GptDecoder, sampler: Sampler, cond, texts, n_steps: int, slots=None):
    """Our loop, greedy, several sequences at once; returns per-sequence (tokens, logits, latents)."""
    slots = list(range(len(texts))) if slots is None else slots
    prefixes = [dec.prefix_embedding(cond, t) for t in texts]
    for s in slots:
        sampler.reset(s, GREEDY, [1, dec.start_audio_token], allow_stop=False)
    logits, latents = dec.prefill(slots, prefixes)
    rows = torch.tensor(slots)
    toks = sampler.sample(logits, rows)
    out = [([int(toks[i])], [logits[i]], [latents[i]]) for i in range(len(texts))]
    assert slots == list(range(len(slots))), "decode_step runs slots 0..b-1"
    for c in range(1, n_steps):
        cache_pos = torch.tensor([p.shape[0] - 1 + c for p in prefixes])
        audio_pos = torch.full((len(texts),), c)
        key_len = int(cache_pos.max()) + 1
        logits, latents = dec.decode_step(toks, cache_pos, audio_pos, key_len)
        toks = sampler.sample(logits, rows)
        for i in range(len(texts)):
            out[i][0].append(int(toks[i]))
            out[i][1].append(logits[i])
            out[i][2].append(latents[i])
    return [(t, torch.stack(lg), torch.stack(lt)) for t, lg, lt in out]


@torch.inference_mode()
def test_logits_and_latents_match_coqui_reference_forward(model):
    gpt = model.gpt
    cond, _ = cond_and_speaker(model)
    text = text_tokens(14)
    dec = GptDecoder(gpt, slots=2, max_len=128)
    sampler = Sampler(2, dec.vocab, dec.stop_audio_token, dec.device)
    tokens, logits, latents = greedy_decode(dec, sampler, cond, [text], n_steps=24)[0]

    # Reference 1: coqui's inference model over the whole sequence at once (no cache).
    fake_inputs = gpt.compute_embeddings(cond, text)
    ids = torch.cat([fake_inputs, torch.tensor([tokens[:-1]])], dim=1)
    ref = gpt.gpt_inference(ids, output_hidden_states=True, return_dict=True)
    start = fake_inputs.shape[1] - 1
    ref_logits = ref.logits[0, start:]
    ref_latents = gpt.final_norm(ref.hidden_states[-1][0, start:])
    assert rel_err(logits, ref_logits) <= REL_TOL
    assert rel_err(latents, ref_latents) <= REL_TOL

    # Reference 2: the latents stock `Xtts.inference` hands to HiFi-GAN (GPT.forward, return_latent).
    codes = torch.tensor([tokens])
    stock = gpt(text, torch.tensor([text.shape[1]]), codes, torch.tensor([codes.shape[1] * gpt.code_stride_len]),
                cond_latents=cond, return_attentions=False, return_latent=True)
    assert stock.shape[1] == len(tokens)
    assert rel_err(latents, stock[0]) <= REL_TOL


@torch.inference_mode()
def test_greedy_tokens_equal_hf_generate(model):
    gpt = model.gpt
    cond, _ = cond_and_speaker(model)
    text = text_tokens(9, seed=3)
    ref = gpt.generate(cond, text, do_sample=False, repetition_penalty=5.0, max_new_tokens=40)[0].tolist()
    dec = GptDecoder(gpt, slots=1, max_len=128)
    sampler = Sampler(1, dec.vocab, dec.stop_audio_token, dec.device)
    ours = greedy_decode(dec, sampler, cond, [text], n_steps=len(ref))[0][0]
    assert len(set(ref)) > 10, "the reference should not be degenerate"
    assert ours == ref


@torch.inference_mode()
def test_batched_decoding_equals_one_at_a_time(model):
    gpt = model.gpt
    cond, _ = cond_and_speaker(model)
    texts = [text_tokens(n, seed=n) for n in (5, 17, 11)]
    dec = GptDecoder(gpt, slots=4, max_len=128)
    sampler = Sampler(4, dec.vocab, dec.stop_audio_token, dec.device)
    together = greedy_decode(dec, sampler, cond, texts, n_steps=20)
    for text, (tokens, logits, latents) in zip(texts, together):
        alone = greedy_decode(dec, sampler, cond, [text], n_steps=20)[0]
        assert tokens == alone[0]
        assert rel_err(logits, alone[1]) <= REL_TOL
        assert rel_err(latents, alone[2]) <= REL_TOL


@torch.inference_mode()
def test_moved_slot_decodes_as_before(model):
    gpt = model.gpt
    cond, _ = cond_and_speaker(model)
    texts = [text_tokens(6, seed=1), text_tokens(8, seed=2)]
    dec = GptDecoder(gpt, slots=2, max_len=64)
    prefixes = [dec.prefix_embedding(cond, t) for t in texts]
    dec.prefill([0, 1], prefixes)
    p1 = prefixes[1].shape[0]
    want, _ = dec.decode_step(torch.tensor([5, 7]), torch.tensor([prefixes[0].shape[0], p1]), torch.tensor([1, 1]), p1 + 1)
    dec.prefill([1], [prefixes[1]])  # undo the decode write, then move row 1 into slot 0
    dec.move_slot(1, 0, p1)
    got, _ = dec.decode_step(torch.tensor([7]), torch.tensor([p1]), torch.tensor([1]), p1 + 1)
    assert rel_err(got[0], want[1]) <= REL_TOL


@torch.inference_mode()
def test_half_precision_weights_and_cache_are_really_half():
    model = tiny_xtts(seed=1)
    cond, _ = cond_and_speaker(model)
    text = text_tokens(7)
    ref_dec = GptDecoder(model.gpt, slots=1, max_len=64)
    ref_logits, _ = ref_dec.prefill([0], [ref_dec.prefix_embedding(cond, text)])
    model.gpt.to(torch.bfloat16)  # fp16 matmuls are not available on every CPU; bf16 is
    dec = GptDecoder(model.gpt, slots=1, max_len=64)
    weights = [t for layer in dec.layers for t in (layer.qkv_w, layer.fc_w, layer.proj_w, layer.ln1_w)]
    assert all(w.dtype == torch.bfloat16 for w in weights + [dec.mel_emb, dec.mel_pos, dec.mel_head.weight])
    assert dec.k_cache.dtype == dec.v_cache.dtype == torch.bfloat16
    logits, latents = dec.prefill([0], [dec.prefix_embedding(cond, text)])
    assert logits.dtype == latents.dtype == torch.bfloat16
    assert rel_err(logits.float(), ref_logits) < 0.1  # same model, bf16 rounding


def test_sampling_params_are_validated():
    assert SamplingParams.from_job({}) == SamplingParams()
    for bad in ({"temperature": -1}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": -2}, {"repetition_penalty": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SamplingParams.from_job(bad)


def test_sampling_respects_per_row_parameters():
    torch.manual_seed(0)
    vocab, stop = 40, 39
    sampler = Sampler(4, vocab, stop, torch.device("cpu"), seed=1)
    logits = torch.randn(4, vocab) * 3
    logits[:, stop] = 100.0  # stop is by far the likeliest
    sampler.reset(0, SamplingParams(temperature=0.0, repetition_penalty=1.0), [], allow_stop=True)
    sampler.reset(1, SamplingParams(temperature=0.0, repetition_penalty=1.0), [], allow_stop=False)
    sampler.reset(2, SamplingParams(temperature=1.0, top_k=2, top_p=1.0, repetition_penalty=1.0), [], allow_stop=False)
    sampler.reset(3, SamplingParams(temperature=1.0, top_k=0, top_p=1e-6, repetition_penalty=1.0), [], allow_stop=False)
    rows = torch.arange(4)
    no_stop = logits[:, :stop]
    top2 = set(torch.topk(no_stop[2], 2).indices.tolist())
    seen_row2 = set()
    for _ in range(200):
        sampler.seen.zero_()
        t = sampler.sample(logits, rows)
        assert t[0] == stop  # greedy and allowed to stop
        assert t[1] == int(no_stop[1].argmax())  # greedy with stop masked
        seen_row2.add(int(t[2]))
        assert t[3] == int(no_stop[3].argmax())  # top_p tiny keeps only the best
    assert seen_row2 == top2  # top-k 2 draws both, and only those


def test_repetition_penalty_follows_hf():
    sampler = Sampler(1, 5, 4, torch.device("cpu"))
    sampler.reset(0, SamplingParams(temperature=0.0, repetition_penalty=2.0), [0], allow_stop=True)
    # Token 0 leads, but once seen its 3.0 becomes 1.5 and token 1 (2.0) wins.
    assert int(sampler.sample(torch.tensor([[3.0, 2.0, -1.0, 0.0, -5.0]]), torch.tensor([0]))) == 1
    # Negative logits are multiplied: seen token 2 at -0.1 becomes -0.2, below unseen token 3 at -0.15.
    sampler.reset(0, SamplingParams(temperature=0.0, repetition_penalty=2.0), [0, 1, 2], allow_stop=True)
    assert int(sampler.sample(torch.tensor([[-9.0, -9.0, -0.1, -0.15, -5.0]]), torch.tensor([0]))) == 3
