-- The Prefect server keeps its own database next to crawlcoin's store.
CREATE DATABASE prefect;
