"""Checkpoints: saving DTensors to files and restoring them onto any mesh and layout.

Name-based functions (`name_based_save`, `sharded_save`, `name_based_restore`) live in
`name_based`; the object-based `DTensorCheckpoint` and `latest_checkpoint` in `tracking`.
Both plan their work as IR programs (`programs`) and run them through one writer thread
(`writer`).
"""
