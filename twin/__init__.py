"""The digital twin: a simulated colloid experiment with known truth.

``twin.simulate`` runs the ground truth with LAMMPS; ``twin.render`` films it
with a simulated microscope. Parameters and their units are in ``twin.params``.
"""
