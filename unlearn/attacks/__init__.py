"""Attacks on an unlearned model: is the knowledge gone, or only hidden?

Accuracy after an intervention says what the model answers, not what it still knows. Each module is one
attack, budgeted and timed: `relearn` (fine-tuning on a few forget or retain texts; Łucki et al., arXiv
2409.18025; Deeb & Roger, arXiv 2410.08827), `prompting` (k-shot retain context and padding; Doshi &
Stickland, arXiv 2411.12103), `direction` (projecting out the dominant edit direction; Łucki et al.), and
`probe` (linear probes on residual activations). `state` turns a method into an *unlearned state*, a
context-manager factory over a loaded model; `run` drives them all and writes `results/attack/<run-id>/`.
"""
