"""Li-ion conductivity: crystal graphs, a DenseGNN-style ensemble, baselines and prediction."""
