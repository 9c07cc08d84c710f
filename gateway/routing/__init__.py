"""Routing: which workers serve a model (registry), their health, which one takes a request
(policy), and the admission queue in front of them."""
