//! A WASI command (`wasi:cli/run`): a component, but no policy world; refused on compile.

fn main() {
    println!("I am not a policy");
}
