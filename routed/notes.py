"""The research notes' numbers, as data (see the shared research README): what the reports compare against."""

NOTES_THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95)
ALPHAS = (0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9)
MATCHED_COMPUTE = (50.0, 65.0, 80.0)  # Compute% levels at which routed models are compared

# preset: (PPL, Compute%, % better than Standard 3L)
NOTES_RANKING = {
    "asymmetric_best": (22.95, 65.0, 34.2),
    "standard_routing": (23.98, 65.2, 31.2),
    "lpt_routing": (28.13, 46.6, 19.3),
    "lpt": (30.54, 100.0, 12.4),
    "asymmetric_l2": (32.07, 42.5, 8.0),
    "standard_3l": (34.86, 100.0, 0.0),
    "standard_1l": (35.29, 33.3, -1.2),
}
# preset: {threshold: (PPL, Shallow%, Compute%)}
NOTES_THRESHOLD_TABLES = {
    "standard_routing": {0.5: (40.61, 95.5, 36.3), 0.7: (39.41, 88.7, 40.9), 0.8: (40.36, 83.7, 44.2),
                         0.9: (36.98, 71.8, 52.1), 0.95: (32.21, 57.1, 61.9)},
    "lpt": {0.5: (43.05, 95.1, 36.6), 0.7: (44.44, 89.9, 40.1), 0.8: (45.89, 85.2, 43.2),
            0.9: (47.38, 75.5, 49.7), 0.95: (48.16, 64.6, 56.9)},
}
