//! Images in and out of files: `load`, `save`, `import`.

mod import;
mod load;
mod save;

pub use self::import::import;
pub use self::load::{Loaded, load};
pub use self::save::{
    Format, SaveReport, save, save_images, save_images_to_file, save_targets, save_targets_to_file,
    save_to_file,
};

#[cfg(test)]
mod tests;
