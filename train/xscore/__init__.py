"""``zoo xscore``: the training grid (recipe per dataset size, cells, shards) behind the cross-dataset evaluator.
The formula is :mod:`zoo.xscore`; the paper's peer set is :mod:`zoo.backbones.xscore_peers`."""
