"""Methods that drive models: RL refinement against a reward model (`rl`), the SANDBOX society
(`sandbox`) and the Mistake Analysis pipeline (`mistakes`). Their outputs train with the losses of
`jaxalign.objectives`; submodules are imported where used, so importing the package is free."""
