"""Reviews: a person's judgement of an answer, kept with what training and calibration need."""
