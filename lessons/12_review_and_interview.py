# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown] tags=["launch"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/moe-lab/moe-lab/blob/main/notebooks/12_review_and_interview.ipynb) [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/moe-lab/moe-lab/main?urlpath=lab/tree/notebooks/12_review_and_interview.ipynb)

# %% tags=["launch"] jupyter={"source_hidden": true}
# NBVAL_IGNORE_OUTPUT
# Setup for Google Colab only: elsewhere (JupyterLab, Binder) this cell does nothing.
# Colab has torch and numpy; it lacks plotly >= 6 with anywidget (for the live figures), the
# corpus of lesson 05, transformers 5 (lesson 09) and the course package. Its ipywidgets 7 is
# kept: ipywidgets 8 breaks there.
import sys

if "google.colab" in sys.modules:
    import subprocess

    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "plotly>=6", "anywidget",
                    "pyyaml", "chatterbot-corpus>=1.3.3", "transformers>=5.0,<6",
                    "moe-lab @ git+https://github.com/moe-lab/moe-lab@main"], check=True)
    from google.colab import output

    output.enable_custom_widget_manager()

# %% [markdown]
# # 12 · Review and interview practice
#
# **Goal.** Test yourself on the whole course before an interview. The course began as a Korean
# study card; it ends with that card's three interview questions, quoted exactly as the card
# writes them. Write your own answer first, then reveal the card's model answer and a checklist
# of key points, each linked to the lesson section where the point runs as code. Then a mixed
# review with one question from every lesson, and a mock interview of four harder questions,
# each answered by a number this course measured (read from the shipped results or computed
# here), never by a number typed into the text.
#
# Prerequisites: lessons 00-07. Nothing new is built here, so there is no exercise; the quizzes
# come from `moe_lab.quizzes` (one YAML file per lesson, `moe_lab/quizzes/NN.yaml`) and are
# drawn by `moe_lab.widgets.quiz.QuizWidget`. Switch the language with the English / 한국어
# buttons.

# %%
import json
from pathlib import Path

import torch

import moe_lab
from moe_lab import TopKRouter, compute_capacity
from moe_lab.lm.train import LESSON05_RUNS, load_log
from moe_lab.quizzes import load_quiz, review_questions
from moe_lab.quizzes.render import LABELS
from moe_lab.systems.params import MIXTRAL_8X7B, count_parameters, flops_per_token
from moe_lab.variants.expert_choice import expert_choice_capacity, expert_choice_routing
from moe_lab.viz.lm import capacity_sweep_table
from moe_lab.widgets.quiz import QuizWidget, show_quiz

# %% [markdown]
# ## 1. The starting card's three questions
#
# The card (`MoE 라우터와 희소 혼합`, "MoE Router & Sparse Mixture") ends with these questions,
# quoted verbatim; the English is the course's translation:
#
# 1. **MoE(Mixture-of-Experts) 모델이 기존의 Dense 모델에 비해 갖는 장점은 무엇인가요?**
#    (What advantages does an MoE (Mixture-of-Experts) model have over a conventional dense model?)
# 2. **MoE 모델의 라우터는 어떤 역할을 하며, 학습 시 발생할 수 있는 주요 문제는 무엇인가요?**
#    (What does the router of an MoE model do, and what is the main problem that can arise in training?)
# 3. **라우팅 쏠림 문제를 해결하기 위한 방법은 무엇인가요?**
#    (How is the routing-collapse problem solved?)
#
# Write your answer in the box, then press the button: the card's model answer appears, with a
# checklist of the points a strong answer makes, each linked to the section of the lesson that
# shows it running. The card's answers are short; the checklists add what an interviewer asks
# next.

# %%
# NBVAL_IGNORE_OUTPUT
card = load_quiz(12)
show_quiz(card)

# %% [markdown]
# The questions and the card's answers are data (`moe_lab/quizzes/12.yaml`); the same text in a
# static form, for a viewer without a kernel, is in section 5.

# %%
# NBVAL_CHECK_OUTPUT
for question in card.questions:
    print(f"{question.id}: {len(question.key_points)} key points ->",
          sorted({point.see.split('#')[0] for point in question.key_points}))

# %% [markdown]
# ## 2. Mixed review: one question from every lesson
#
# One multiple-choice or numeric question from each lesson's quiz, drawn by a seeded generator
# (`moe_lab.quizzes.review_questions`), so the review is the same for everyone; `seed=1` draws
# another set. Numeric answers are computed by the package when the quiz loads (for example
# `compute_capacity` for a capacity), so they match the code you ran.

# %%
# NBVAL_IGNORE_OUTPUT
review = review_questions(seed=0)
QuizWidget(review, title=LABELS["review_title"])

# %%
# NBVAL_CHECK_OUTPUT
print(len(review), "questions:", [q.id for q in review])

# %% [markdown]
# ## 3. Mock interview: four harder questions, answered by measurements
#
# Each question below is one an interviewer asks after the card's three. Answer it aloud first;
# then run the cell, which computes or reads the number that backs the answer.
#
# ### Why does the router run in fp32, even in a bf16 model?
#
# Because the router's output is a discrete choice: bfloat16 keeps 8 bits of mantissa, so
# near-tied logits round together or swap, and the token goes to a different expert. And because
# it is cheap: the router is a $D \times E$ matrix. The first cell repeats lesson 01's experiment
# (same weights, same bf16 activations, a float32 and a bfloat16 router); the second computes
# what float32 costs in Mixtral 8x7B, from `moe_lab.systems.params`.

# %%
# NBVAL_IGNORE_OUTPUT
# (the exact count depends on the CPU's bf16 matmul kernel; the next cells check what holds everywhere)
moe_lab.seed_everything(0)
d_model, num_experts, top_k, n_tokens = 1024, 8, 2, 4096
router_fp32 = TopKRouter(d_model, num_experts, top_k)
router_bf16 = TopKRouter(d_model, num_experts, top_k, router_dtype=torch.bfloat16)
router_bf16.load_state_dict(router_fp32.state_dict())  # the same weights
x_bf16 = torch.randn(n_tokens, d_model).to(torch.bfloat16)  # (N, D) bf16 activations
with torch.no_grad():
    out_fp32, out_bf16 = router_fp32(x_bf16), router_bf16(x_bf16)
# a token flips when its set of K experts changes (the order within the K does not matter)
flipped = (out_fp32.topk_idx.sort(-1).values != out_bf16.topk_idx.sort(-1).values).any(-1)  # (N,)
print(f"bf16 router: {int(flipped.sum())} of {n_tokens} tokens change experts "
      f"({flipped.float().mean():.2%}) in one layer")

# %%
# NBVAL_CHECK_OUTPUT
print("some tokens change experts in bf16:", bool(flipped.any()))
counts = count_parameters(MIXTRAL_8X7B)
router_flops = 2 * counts["router"].active  # a multiply and an add per router weight
expert_flops = 2 * counts["experts"].active
print(f"Mixtral 8x7B, per token: router {router_flops / 1e6:.1f} MFLOPs, experts "
      f"{expert_flops / 1e9:.1f} GFLOPs: the router is {100 * router_flops / expert_flops:.4f} % "
      f"of the expert FLOPs")
print(f"all FLOPs per token (no attention scores): "
      f"{flops_per_token(MIXTRAL_8X7B).forward / 1e9:.1f} GFLOPs")

# %% [markdown]
# **Answer, with the numbers above:** in bf16 some tokens change experts (the first cell counts
# them), in every layer and at every step, and each change is a jump no later layer can undo;
# keeping the router in float32 costs the tiny share of the FLOPs printed last. (Lesson 01,
# section 3.)
#
# ### Why does expert choice routing not suit autoregressive decoding?
#
# In expert choice routing (Zhou et al. 2022) each expert picks its $C = \lceil c \cdot N / E \rceil$
# best-scoring tokens from the batch, instead of each token picking $K$ experts. Two measurements
# with the package's router and the package's expert-choice selection
# (`moe_lab.variants.expert_choice.expert_choice_routing`, lesson 08): first, whether a token's experts
# depend on *other* tokens of the batch, here the tokens after it in the sequence, which a
# decoder has not generated yet; second, what happens when a decoding step routes a single token.

# %%
# NBVAL_CHECK_OUTPUT
def expert_choice_mask(router_probs: torch.Tensor, capacity: int) -> torch.Tensor:
    """(N, E) bool: which experts took each token, from the package's expert-choice routing."""
    token_idx, _ = expert_choice_routing(router_probs, capacity)  # (E, C): each expert's tokens
    taken = torch.zeros(router_probs.shape[1], router_probs.shape[0], dtype=torch.bool)  # (E, N)
    return taken.scatter_(1, token_idx, True).T  # (N, E)


moe_lab.seed_everything(0)
d_model, num_experts, factor, seq_len = 64, 8, 2.0, 128
router = TopKRouter(d_model, num_experts, 2)
prefix, future, other_future = (torch.randn(seq_len // 2, d_model) for _ in range(3))
with torch.no_grad():
    out_a = router(torch.cat([prefix, future]))  # probs (T, E), topk_idx (T, K)
    out_b = router(torch.cat([prefix, other_future]))  # the same prefix, another continuation
probs_a, probs_b, topk_a, topk_b = out_a.probs, out_b.probs, out_a.topk_idx, out_b.topk_idx
capacity = expert_choice_capacity(factor, seq_len, num_experts)  # C = ceil(c * T / E)
ec_a = expert_choice_mask(probs_a, capacity)[: seq_len // 2]  # (T/2, E): the prefix's experts
ec_b = expert_choice_mask(probs_b, capacity)[: seq_len // 2]
changed_ec = (ec_a != ec_b).any(-1).float().mean().item()
changed_topk = (topk_a[: seq_len // 2] != topk_b[: seq_len // 2]).any(-1).float().mean().item()
print(f"prefix tokens whose experts change with the continuation: expert choice "
      f"{changed_ec:.0%}, token choice (top-2) {changed_topk:.0%}")
with torch.no_grad():
    one_token = router(torch.randn(1, d_model)).probs  # (1, E): one decoding step
step_capacity = expert_choice_capacity(factor, 1, num_experts)  # C for a batch of one token
step_mask = expert_choice_mask(one_token, step_capacity)
print(f"one decoding step: C = {step_capacity}, the token runs "
      f"{int(step_mask.sum())} of {num_experts} experts (top-2 runs 2)")

# %% [markdown]
# **Answer, with the numbers above:** under expert choice a token's experts depend on the tokens
# that come after it, which do not exist yet when decoding (it breaks causality, and training
# sees a routing that inference cannot reproduce); and a step with one token gives every expert
# its capacity of at least one slot, so the token runs all $E$ experts. Zhou et al. name this
# limitation for auto-regressive generation; decoders use token choice. (Lesson 08.)
#
# ### What does the capacity factor trade?
#
# Drops against padding. Lesson 05 trained the same MoE with capacity factors 0.5 to 2 and
# dropless; its logs are shipped in `moe_lab/results/lesson05/`. The table reads the final
# evaluation of each run; the last column is the share of a capacity-padded buffer that would be
# empty with perfectly balanced routing, $1 - NK / (E C)$, from `compute_capacity`.

# %%
# NBVAL_CHECK_OUTPUT
sweep = capacity_sweep_table([load_log(name) for name in LESSON05_RUNS if name.startswith("moe")])
config = load_log("moe")["train_config"]
n_tok, k_, e_ = config["batch_size"] * config["seq_len"], 2, 8
print(f"{'capacity':>9} {'drop rate':>10} {'val loss':>9} {'padding if balanced':>20}")
for row in sweep:
    if row.capacity_factor is None:
        padding = "-"
    else:
        slots = e_ * compute_capacity(row.capacity_factor, n_tok, k_, e_)  # E * C rows
        padding = f"{100 * max(0.0, 1 - n_tok * k_ / slots):.0f} %"
    print(f"{row.label:>9} {row.drop_rate:>10.3f} {row.val_loss:>9.3f} {padding:>20}")

# %% [markdown]
# **Answer, with the table above:** a small factor drops many assignments and the validation
# loss is clearly worse; raising it drops less but reserves empty slots that the padded strategy
# computes and sends anyway (the last column, even with perfect balance). The dropless run keeps
# every assignment at the price of data-dependent shapes. (Lessons 02, 05, 06.)
#
# ### Why is an MoE layer slower per FLOP than a dense FFN, most of all on small batches?
#
# The benchmark of lesson 06 (`python -m moe_lab.bench`, results shipped in
# `moe_lab/results/bench_cpu.json`) times forward + backward of each strategy against the
# *dense limit*: the same active FLOPs done as one FFN over $NK$ rows. The cell reads it and
# computes the throughput: forward + backward is about $3 \times 6DF \cdot NK$ FLOPs.

# %%
# NBVAL_CHECK_OUTPUT
bench = json.loads((Path(moe_lab.__file__).parent / "results" / "bench_cpu.json").read_text())
print(f"recorded on: {bench['environment']['device']}, {bench['environment']['dtype']}")
rows = {}
for r in bench["results"]:
    shape = (r["tokens"], r["d_model"], r["d_ff"], r["num_experts"], r["top_k"])
    rows.setdefault(shape, {})[r["strategy"]] = r
print(f"{'(T, D, F, E, K)':>26} {'active GFLOP':>12} {'sorted / dense limit':>21} "
      f"{'GFLOP/s dense':>14} {'GFLOP/s sorted':>15}")
for shape, by_strategy in sorted(rows.items(), key=lambda kv: (kv[0][3:], kv[0][0] * kv[0][1])):
    tokens, d, f, _, k = shape
    gflop = 3 * 6 * d * f * tokens * k / 1e9  # forward + backward of the active experts
    dense, sorted_ = by_strategy["dense_limit"], by_strategy["sorted"]
    print(f"{str(shape):>26} {gflop:>12.1f} {sorted_['ratio_to_dense_limit']:>21.2f} "
          f"{gflop / (dense['median_ms'] / 1e3):>14.1f} {gflop / (sorted_['median_ms'] / 1e3):>15.1f}")

# %% [markdown]
# **Answer, with the table above:** the sorted MoE layer is slower than the dense limit at every
# shape, because routing adds work that is not a matmul (router, sort, gather, scatter, a host
# sync for the counts) and splits the $NK$ rows into $E$ smaller matmuls. That overhead is a
# larger share of a small problem: at the same $E = 8, K = 2$ (rows are grouped by $E, K$,
# smallest problem first) the ratio to the dense limit falls as the problem grows, and many small
# experts ($E = 64$) cost more at the same FLOPs. The absolute GFLOP/s of this 2-core CPU hardly
# separate the shapes (its dense matmuls are no faster at the large one), which is why the
# ratio, measured back to back, is the number to quote. Decoding, with a few tokens per step, is
# the extreme case. (Lesson 06.)
#
# ## 4. Summary
#
# - The card's three questions: what MoE gains (capacity at the same active compute), what the
#   router does and how it fails (routing collapse), and how that is fixed (the load-balancing
#   loss, and beyond it the z-loss, the DeepSeek-V3 bias and capacity limits).
# - Each claim in a good answer has a place in the course where it runs; the checklists point
#   there.
# - Harder follow-ups have measured answers: the router's fp32 is almost free and avoids flipped
#   choices; expert choice breaks causality at decoding; the capacity factor trades drops for
#   padding; MoE pays a per-call routing overhead that small batches cannot amortise.
#
# ## 5. Interview questions (self-check)
#
# The starting card's questions and model answers, verbatim, with the course's English.
#
# <details><summary>1. MoE(Mixture-of-Experts) 모델이 기존의 Dense 모델에 비해 갖는 장점은 무엇인가요?
# <br>(What advantages does an MoE (Mixture-of-Experts) model have over a conventional dense model?)</summary>
#
# MoE 모델은 파라미터 수를 크게 늘려 모델의 용량과 성능을 높이면서도, 추론 시에는 입력에 따라 일부 전문가만 희소하게 활성화하여 계산 비용을 거의 일정하게 유지할 수 있습니다. 이는 더 적은 계산량으로 더 크고 강력한 모델을 학습하고 서빙할 수 있게 해준다는 장점이 있습니다.
#
# An MoE model greatly increases its number of parameters, raising the model's capacity and
# quality, while at inference it activates only a few experts sparsely, depending on the input,
# so the compute cost stays almost constant. The advantage is that a larger, stronger model can
# be trained and served with less computation.
# </details>
#
# <details><summary>2. MoE 모델의 라우터는 어떤 역할을 하며, 학습 시 발생할 수 있는 주요 문제는 무엇인가요?
# <br>(What does the router of an MoE model do, and what is the main problem that can arise in training?)</summary>
#
# 라우터는 각 입력 토큰을 처리할 가장 적합한 전문가(Expert)를 동적으로 선택하는 게이팅 네트워크입니다. 주요 문제로는 '라우팅 쏠림' 현상이 있습니다. 즉, 라우터가 소수의 인기 있는 전문가에게만 대부분의 토큰을 보내고 나머지 전문가는 거의 사용되지 않아 학습이 비효율적으로 되는 문제입니다.
#
# The router is a gating network that dynamically chooses the most suitable experts to process
# each input token. The main problem is routing collapse: the router sends most tokens to a few
# popular experts and the other experts are hardly used, so training becomes inefficient.
# </details>
#
# <details><summary>3. 라우팅 쏠림 문제를 해결하기 위한 방법은 무엇인가요?
# <br>(How is the routing-collapse problem solved?)</summary>
#
# 로드 밸런싱 손실(Load Balancing Loss)이라는 보조 손실 함수를 사용합니다. 이 손실 함수는 각 전문가에게 할당되는 토큰의 양을 균등하게 분배하도록 유도하여, 특정 전문가에게 트래픽이 집중될 경우 페널티를 부과합니다. 이를 통해 모든 전문가가 균형 있게 학습에 참여하도록 만듭니다.
#
# With an auxiliary loss called the load-balancing loss. It pushes the router to spread the
# tokens evenly over the experts and penalises traffic that concentrates on particular experts,
# so that every expert takes part in training in a balanced way.
# </details>
#
# ## 6. Further reading
#
# - Shazeer et al. 2017, [*Outrageously Large Neural Networks: The Sparsely-Gated Mixture-of-Experts Layer*](https://arxiv.org/abs/1701.06538): the original MoE layer, noisy top-k gating, the importance loss.
# - Fedus, Zoph, Shazeer 2021, [*Switch Transformers*](https://arxiv.org/abs/2101.03961): top-1 routing, the load-balancing loss, selective precision, the capacity factor.
# - Jiang et al. 2024, [*Mixtral of Experts*](https://arxiv.org/abs/2401.04088), and Mistral AI's [announcement](https://mistral.ai/news/mixtral-of-experts/) (the card's third link).
# - Zoph et al. 2022, [*ST-MoE*](https://arxiv.org/abs/2202.08906): the router z-loss and what experts specialise in.
# - Zhou et al. 2022, [*Mixture-of-Experts with Expert Choice Routing*](https://arxiv.org/abs/2202.09368).
# - DeepSeek-AI 2024, [*DeepSeek-V3 Technical Report*](https://arxiv.org/abs/2412.19437): auxiliary-loss-free balancing.
# - Gale et al. 2022, [*MegaBlocks*](https://arxiv.org/abs/2211.15841): dropless MoE with grouped matrix multiplies.
