"""Fashion-MNIST example: data (Debian idx files), model, training; see README.md here."""
