//! weft lab: a whole cluster network on one machine, from real agents and the real CNI plugin.
