"""A prompted pass over images of several tasks groups them by task (:class:`TaskGroups`): each task's
generator maps are applied once to its images instead of a gathered copy per image.

Not bit for bit: a group's channel map is one matrix product over all its images where the gathered
form multiplies each image alone, and the two kernels may sum the ``dim`` products in another order
(seen on this CPU: the generator's prompts alone identical on every shape tried, the model's logits
within 5e-7 and identical in 2 of 20 random batches of 16 images of 5 tasks). So the tests ask for
the same selected tasks and classes and logits within 1e-5, and gradients within 1e-5 relative.
An image's task and class never depend on its batch mates, and its logits only within 1e-5 (the
backbone's own float noise between batch sizes is about 1e-6)."""

import pytest
import torch

import casdap
from casdap.models.dap import CASDAP
from casdap.models.prompt_sources.dap import PromptGenerator
from casdap.models.prompt_sources.groups import TaskGroups


def _model(source: str = "dap") -> tuple[CASDAP, torch.Tensor]:
    """Five trained tasks whose maps all differ and whose keys are the queries of images 0..4, so
    the ten images select several tasks."""
    torch.manual_seed(0)
    backbone = casdap.create_model("rcvit_xs", num_classes=0, distillation=False)
    generator = {"channel_mix": True, "task_generators": True} if source == "dap" else {}
    model = CASDAP(backbone, num_classes=10, num_tasks=5, num_tokens=4, task_emb_dim=8, stages=(2, 3),
                   injection="attn", prompt_source=source, **generator).eval()
    x = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        model.dap_keys.copy_(model.forward_query(x[:5]))
    for t in range(5):
        model.mark_trained(t)
    return model, x


def test_groups_sort_by_task_and_restore_the_batch_order():
    task = torch.tensor([2, 0, 2, 1, 0])
    groups = TaskGroups.of(task, 4)
    assert groups.tasks == (0, 1, 2) and groups.counts == (2, 1, 2)
    x = torch.arange(5.0, requires_grad=True)
    seen = []

    def fn(rows, t):
        seen.append((t, rows.tolist()))
        return rows * 10 + t

    out = groups.apply(x, fn)
    assert seen == [(0, [1.0, 4.0]), (1, [3.0]), (2, [0.0, 2.0])]
    assert out.tolist() == [2.0, 10.0, 22.0, 31.0, 40.0]
    out.sum().backward()
    assert x.grad.tolist() == [10.0] * 5


@pytest.mark.parametrize("channel_mix", [False, True])
@pytest.mark.parametrize("dim,batch", [(48, 7), (220, 64)])
def test_grouped_generator_maps_agree_with_gathered(channel_mix, dim, batch):
    torch.manual_seed(dim)
    gen = PromptGenerator(dim, 10, 16, channel_mix=channel_mix, task_maps=10)
    with torch.no_grad():
        for p in gen.parameters():
            p.add_(0.1 * torch.randn_like(p))
    emb, task = torch.randn(batch, 16), torch.randint(0, 10, (batch,))
    for size in (1, 3):
        x = torch.randn(batch, dim, size, size)
        with torch.no_grad():
            grouped, gathered = gen(x, emb, TaskGroups.of(task, 10)), gen(x, emb, task)
        assert torch.allclose(grouped, gathered, rtol=0, atol=1e-5)


def test_grouped_prediction_agrees_with_gathered():
    model, x = _model()
    with torch.no_grad():
        grouped = model(x)
        assert len(grouped.key_idx.unique()) >= 3  # a batch of several tasks
        assert isinstance(model._task_arg(grouped.key_idx), TaskGroups)
        assert model._task_arg(grouped.key_idx[:1]) == int(grouped.key_idx[0])  # one task: an int
        top_grouped = model.forward_top_tasks(x, 2)
        model.group_tasks = False
        gathered = model(x)
        top_gathered = model.forward_top_tasks(x, 2)
    assert torch.equal(grouped.key_idx, gathered.key_idx)
    assert torch.equal(grouped.logits.argmax(1), gathered.logits.argmax(1))
    assert torch.allclose(grouped.logits, gathered.logits, rtol=0, atol=1e-5)
    (scores, top, logits), (scores_b, top_b, logits_b) = top_grouped, top_gathered
    assert torch.equal(scores, scores_b) and torch.equal(top, top_b)
    assert torch.allclose(logits, logits_b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("source", ["dap", "static"])
def test_each_image_alone_gets_what_it_gets_in_a_batch_of_several_tasks(source):
    model, x = _model(source)
    with torch.no_grad():
        together = model(x)
        alone = [model(x[i:i + 1]) for i in range(len(x))]
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(2))
        shuffled = model(x[perm])
    assert len(together.key_idx.unique()) >= 3
    assert torch.equal(torch.cat([a.key_idx for a in alone]), together.key_idx)
    logits = torch.cat([a.logits for a in alone])
    assert torch.equal(logits.argmax(1), together.logits.argmax(1))
    assert torch.allclose(logits, together.logits, rtol=0, atol=1e-5)
    assert torch.equal(shuffled.key_idx, together.key_idx[perm])
    assert torch.allclose(shuffled.logits, together.logits[perm], rtol=0, atol=1e-5)


def test_training_on_a_batch_of_several_tasks_gets_the_gathered_gradients():
    model, x = _model()
    model.train()
    task = torch.tensor([0, 1, 2, 3, 4, 0, 0, 2, 4, 1])
    y = torch.arange(10) % 10
    grads = []
    for group in (True, False):
        model.group_tasks = group
        model.zero_grad()
        out = model(x, task_id=task)
        (torch.nn.functional.cross_entropy(out.logits, y) - 0.1 * out.pull).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    grouped, gathered = grads
    assert grouped.keys() == gathered.keys()
    task_maps = [n for n in grouped if "task_token_map" in n or "task_channel_mix" in n]
    assert task_maps and all(grouped[n].abs().sum() > 0 for n in task_maps)
    for name in grouped:
        scale = float(gathered[name].abs().max())
        assert torch.allclose(grouped[name], gathered[name], rtol=1e-5, atol=1e-5 * scale), name
