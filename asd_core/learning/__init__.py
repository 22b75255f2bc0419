"""Learning layer: features of a stage's output, the ensemble predictor, its calibration and assessment."""
