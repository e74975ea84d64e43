"""Upload -> face crops: decode and sample frames (media), detect faces (faces), cut the
classifiers' crops (crop), follow people across frames (tracks); pipeline ties them together."""
