"""Retraining (issue 13, item 9): ``retrain.yaml`` beside a model declares how to fetch, check,
train and evaluate a new version; :mod:`.pipeline` runs those steps and hands a better version to
the running server's shadow and canary. No transport here: the admin calls come in through a
``Deployer`` (``sluice.server.cli_retrain`` implements it over ``sluice.clients``)."""
