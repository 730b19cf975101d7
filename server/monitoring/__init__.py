"""The feedback loop: prediction log, ground truth, live quality, drift and cost, fed by finished
requests through one bounded hand-off (:mod:`.hub`) and never on the request path."""
