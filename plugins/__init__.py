"""Built-in convrepair plugins. Each subpackage registers through the `convrepair.plugins` entry points."""
