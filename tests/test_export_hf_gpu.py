"""The exported Hugging Face model on CUDA, where it runs this repository's Triton kernels: fp32 logits and greedy
generation equal our model's on the same device, and left padding leaves the continuation unchanged."""
import pytest
import torch

from export_helpers import random_model, rms_rel

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
              pytest.mark.usefixtures("no_tf32")]
modeling = pytest.importorskip("model.hf.modeling_lrnn", reason="needs transformers' linear-attention cache API",
                               exc_type=ImportError)


@pytest.mark.parametrize("mixer,neg", [("deltanet", False), ("deltanet", True), ("mamba", False), ("mamba", True)])
def test_cuda_kernels_match_our_model(mixer, neg, tmp_path):
    from model.export import write_folder

    ours = random_model(mixer, neg, tie_embeddings=False)
    write_folder(ours, tmp_path / "no-tokenizer", tmp_path)
    hf = modeling.LRNNForCausalLM.from_pretrained(tmp_path).cuda().eval()
    ours = ours.cuda()
    ids = torch.randint(3, 64, (2, 100), device="cuda")  # > 64: crosses a delta-rule chunk
    with torch.no_grad():
        assert modeling.use_repo_kernels(ids.float())
        # both run the same kernels in fp32; 1e-5 catches any argument or state mistake
        assert rms_rel(hf(ids).logits, ours(ids)) < 1e-5
        prompt = ids[:, :20]
        greedy = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=10, do_sample=False)
        assert torch.equal(greedy, ours.generate(prompt, max_new_tokens=10))
        batch = prompt.clone()
        batch[1, :7] = 0
        mask = torch.ones_like(batch)
        mask[1, :7] = 0
        padded = hf.generate(batch, attention_mask=mask, max_new_tokens=10, do_sample=False)
        alone = hf.generate(prompt[1:, 7:], attention_mask=torch.ones_like(prompt[1:, 7:]), max_new_tokens=10,
                            do_sample=False)
        assert torch.equal(padded[1, 20:], alone[0, 13:])
