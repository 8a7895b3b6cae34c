"""Training-loop pieces shared by the trainers: distributed set-up, seeding, checkpoints, logging."""
